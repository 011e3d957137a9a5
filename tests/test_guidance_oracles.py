"""Guidance against exact answers on a spatially correlated Gaussian prior (identity codec, no training).

Prior x0 ~ N(m, B) in latent = physical space; with z_t = mu x0 + sigma eps the exact denoiser is
E[x0 | z_t] = m + mu B (mu^2 B + sigma^2 I)^-1 (z_t - mu m), eps_hat = (z_t - mu E[x0 | z_t]) / sigma,
written below through B's eigenvectors (differentiable, float64 inside). Linear H picking grid points
and Gaussian R give the Kalman posterior x_a = m + K (y - H m), K = B H^T (H B H^T + R)^-1,
P_a = (I - K H) B. Repaint has no exact answer here (see tests/test_diffusion.py for its limits).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from align_da_ops.analysis.covariance import SpectralCovariance
from align_da_ops.analysis.latent_diffusion import LatentDiffusionConfig
from align_da_ops.analysis.threedvar import ThreeDVar, ThreeDVarConfig
from align_da_ops.diffusion.guidance import DPS, IdentityCodec, ObservationTerm, ObsFree, guidance_of
from align_da_ops.diffusion.samplers import Sampler
from align_da_ops.diffusion.schedule import CosineSchedule
from align_da_ops.grid import StateLayout, gaussian_latitudes, longitudes
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.operators import GridInterpolator, PreparedOperator

SCHEDULE = CosineSchedule(1e-3)
N = 32
SHAPE = (1, 1, N)
POINTS = [2, 10, 17, 25]  # observed grid points, 7-8 apart
NEAR = sorted({(p + k) % N for p in POINTS for k in (-3, -2, 2, 3)})  # unobserved, 2-3 points from one
Y = torch.tensor([1.5, -1.0, 0.5, 1.2], dtype=torch.float64)
R_STD = 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ExactGaussian:
    """The exact eps_hat(z_t, t) of x0 ~ N(mean, cov) (mean shaped like a state, cov (n, n) symmetric PSD)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        self.mean = mean.double()
        eigenvalues, self.vectors = torch.linalg.eigh(cov.double())
        self.eigenvalues = eigenvalues.clamp_min(0)

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mu, sigma = SCHEDULE.mu(t).double(), SCHEDULE.sigma(t).double()
        departure = (z.double() - mu * self.mean).flatten(-3) @ self.vectors
        eps = (departure * sigma / (mu**2 * self.eigenvalues + sigma**2)) @ self.vectors.T
        return eps.view_as(z).to(z.dtype)


def periodic_gaussian_b(n: int = N, length: float = 3.0) -> torch.Tensor:
    """Unit variance, correlation exp(-d^2 / 2 length^2) in periodic grid distance d (plus 1e-6 on the diagonal)."""
    i = torch.arange(n, dtype=torch.float64)
    d = (i[:, None] - i[None]).abs()
    d = torch.minimum(d, n - d)
    return torch.exp(-0.5 * (d / length) ** 2) + 1e-6 * torch.eye(n, dtype=torch.float64)


def prior_mean() -> torch.Tensor:
    return torch.sin(2 * math.pi * torch.arange(N, dtype=torch.float64) / N).reshape(SHAPE)


def point_term(points=POINTS, values=Y, error=R_STD) -> ObservationTerm:
    """Observations of the grid values `points` (H weight exactly 1), normalised units (channel std 1)."""
    index = torch.tensor(points, dtype=torch.int64)[:, None].repeat(1, 8)
    weight = torch.zeros(len(points), 8, dtype=torch.float64)
    weight[:, 0] = 1.0
    op = PreparedOperator(index, weight, torch.ones(len(points), dtype=torch.bool), SHAPE)
    return ObservationTerm.build(op, values, np.full(len(points), error), [1.0], min_error=1e-6)


def kalman(mean: torch.Tensor, cov: torch.Tensor, points=POINTS, values=Y, error=R_STD):
    """(posterior mean (n,), posterior covariance (n, n)) for y = x[points] + N(0, error^2)."""
    h = torch.zeros(len(points), cov.shape[0], dtype=torch.float64)
    h[range(len(points)), points] = 1.0
    gain = cov @ h.T @ torch.linalg.inv(h @ cov @ h.T + error**2 * torch.eye(len(points), dtype=torch.float64))
    m = mean.flatten()
    return m + gain @ (values - h @ m), cov - gain @ h @ cov


def generators(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(m) for m in range(n)]


def relative_error(x: torch.Tensor, exact: torch.Tensor, m: torch.Tensor, where=slice(None)) -> float:
    """||x - x_a|| / ||x_a - m|| (the error as a fraction of the exact increment), over `where`."""
    return float((x - exact)[where].norm() / (exact - m)[where].norm())


def test_the_literature_dps_is_the_default():
    assert guidance_of("dps") == DPS(jacobian="denoiser") and LatentDiffusionConfig().jacobian == "denoiser"
    assert guidance_of("dps", jacobian="gaussian").jacobian == "gaussian"
    with pytest.raises(ValueError, match="jacobian"):
        DPS(jacobian="scalar")


def test_dps_through_the_denoiser_recovers_the_kalman_mean_the_scalar_shortcut_does_not():
    """Central trajectory, 64 DDIM steps, strength 1, B length 3 points, 4 of 32 points observed (sigma_o 0.1).

    Measured: VJP through the denoiser 0.132 relative error (0.145 at the points 2-3 away from an
    observation; 88 % of the Kalman increment at observed points, 85 % there); the scalar Gaussian Jacobian
    0.59 (0.73 at those points; 73 % and 38 % of the increment). The VJP's remaining error is DPS's own likelihood approximation (a variance per
    observation that ignores B) and grows with the correlation length: 0.04 / 0.10 / 0.13 / 0.17 / 0.32 at
    lengths 1 / 2 / 3 / 4 / 6 points (scalar: 0.39 / 0.51 / 0.59 / 0.65 / 0.88)."""
    m, b = prior_mean(), periodic_gaussian_b()
    exact, _ = kalman(m, b)
    prior, term = ExactGaussian(m, b), point_term()
    errors = {}
    for jacobian in ("denoiser", "gaussian"):
        guided = DPS(jacobian=jacobian).wrap(prior, SCHEDULE, IdentityCodec(), term)
        x = Sampler(steps=64).sample(guided, SCHEDULE, SHAPE, [None]).flatten().double()
        errors[jacobian] = relative_error(x, exact, m.flatten()), relative_error(x, exact, m.flatten(), NEAR)
    assert errors["denoiser"][0] <= 0.15 and errors["denoiser"][1] <= 0.2, errors
    assert errors["gaussian"][0] > 0.3 and errors["gaussian"][1] > 0.4, errors


def test_dps_ensemble_mean_is_near_the_kalman_mean_and_its_spread_shrinks_at_observations():
    """1000 members, ancestral sampler (stochasticity 1), 64 steps; same problem as above.

    Measured: ensemble-mean relative error 0.126 (scalar Jacobian: 0.47); spread at observed points
    0.21 against prior 1 and Kalman 0.1 (DPS is under-confident there); mean spread over the grid 0.57
    against Kalman 0.54."""
    m, b = prior_mean(), periodic_gaussian_b()
    exact, covariance = kalman(m, b)
    guided = DPS().wrap(ExactGaussian(m, b), SCHEDULE, IdentityCodec(), point_term())
    x = Sampler(steps=64, stochasticity=1.0).sample(guided, SCHEDULE, SHAPE, generators(1000)).flatten(1).double()
    assert relative_error(x.mean(0), exact, m.flatten()) <= 0.15
    spread = x.std(0)
    assert float(spread[POINTS].max()) < 0.3  # prior 1, Kalman 0.1
    kalman_spread = covariance.diagonal().sqrt()
    assert abs(float(spread.mean() / kalman_spread.mean()) - 1) < 0.15


@pytest.mark.parametrize("sampler", [Sampler(steps=64), Sampler(steps=64, stochasticity=1.0)])
def test_obs_free_with_the_exact_denoiser_draws_the_correlated_prior(sampler):
    """1000 members reproduce m and B (measured: |mean - m| <= 0.06, |cov - B| <= 0.17 entrywise);
    the deterministic central trajectory is m (measured: within 0.0025, the sampler starting at zero
    rather than at mu(1) m)."""
    m, b = prior_mean(), periodic_gaussian_b()
    prior = ObsFree().wrap(ExactGaussian(m, b), SCHEDULE, IdentityCodec(), point_term())
    x = sampler.sample(prior, SCHEDULE, SHAPE, generators(1000)).flatten(1).double()
    assert float((x.mean(0) - m.flatten()).abs().max()) < 0.15
    assert float((torch.cov(x.T) - b).abs().max()) < 0.25
    lag3 = torch.stack([torch.corrcoef(torch.stack([x[:, i], x[:, (i + 3) % N]]))[0, 1] for i in range(N)])
    assert abs(float(lag3.mean()) - math.exp(-0.5)) < 0.05
    if sampler.stochasticity == 0:
        central = sampler.sample(prior, SCHEDULE, SHAPE, [None]).flatten().double()
        assert float((central - m.flatten()).abs().max()) < 0.01


def test_dps_with_the_exact_score_of_a_3dvar_b_equals_3dvar():
    """3D-Var (the project's, CG to 1e-12) with the spectral Gaussian B (unit variance, 2500 km, 8x16 grid,
    rank 64) and DPS (central trajectory, 64 steps) on the exact Gaussian score of that same B, dense
    from B's operator; 5 surface-pressure observations at grid points, sigma_o 0.1. Measured: 0.116
    relative error on the increment (scalar Jacobian: 0.61); at 1500 km 0.07, at 4000 km 0.26 (DPS's
    likelihood approximation again)."""
    layout = StateLayout(upper_air=(), surface=("surface_pressure",), levels=())
    lat, lon = gaussian_latitudes(8), longitudes(16)
    covariance = SpectralCovariance.gaussian(layout.channels, lat, lon, sigma=[1.0], length_m=2.5e6)
    shape = covariance.grid_shape
    n = math.prod(shape)
    b = covariance.operator().apply(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, n)
    rows, columns = [1, 3, 4, 6, 2], [2, 5, 9, 13, 11]
    obs = ObsBatch.from_columns(
        latitude=np.asarray(lat)[rows], longitude=np.asarray(lon)[columns], pressure=[np.nan] * 5,
        variable=["surface_pressure"] * 5, value=[1.5, -1.0, 0.8, 1.2, -0.5], error=[0.1] * 5,
        obs_type="test", time="2000-01-01T00",
    )
    op = GridInterpolator(layout, lat, lon).prepare(obs)
    m = 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    threedvar = ThreeDVar(covariance, ThreeDVarConfig(tolerance=1e-12, max_iterations=200)).analyse(m, obs, op)
    assert threedvar.diagnostics["converged"] == 1.0
    term = ObservationTerm.build(op, obs.value, obs.error, [1.0], min_error=1e-6)
    errors = {}
    for jacobian in ("denoiser", "gaussian"):
        guided = DPS(jacobian=jacobian).wrap(ExactGaussian(m, 0.5 * (b + b.T)), SCHEDULE, IdentityCodec(), term)
        x = Sampler(steps=64).sample(guided, SCHEDULE, shape, [None])[0].double()
        errors[jacobian] = relative_error(x.flatten(), threedvar.analysis.flatten(), m.flatten())
    assert errors["denoiser"] <= 0.15 and errors["gaussian"] > 0.3, errors


@pytest.mark.parametrize("jacobian", ["denoiser", "gaussian"])
def test_the_trust_region_caps_the_guidance_term_of_either_jacobian(jacobian):
    """The guided eps differs from the prior's by an RMS of at most `clip` per member; a large clip changes nothing."""
    m, b = prior_mean(), periodic_gaussian_b()
    prior, term = ExactGaussian(m, b), point_term(values=Y + 50.0)  # far-off observations: a large pull
    z = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(1))
    t = torch.tensor(0.3)
    eps = prior(z, t)
    capped = DPS(clip=0.05, jacobian=jacobian).wrap(prior, SCHEDULE, IdentityCodec(), term)(z, t)
    rms = (capped - eps).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(rms, torch.full((3,), 0.05), rtol=1e-4)
    loose = DPS(clip=1e9, jacobian=jacobian).wrap(prior, SCHEDULE, IdentityCodec(), term)(z, t)
    assert float((loose - eps).pow(2).mean(dim=(1, 2, 3)).sqrt().min()) > 0.05


def test_benchmark_mode_names_choose_the_dps_jacobian():
    from align_da_ops.diffusion.guidance import parse_mode

    assert parse_mode("dps") == ("dps", "denoiser") and parse_mode("dps:gaussian") == ("dps", "gaussian")
    assert parse_mode("obs_free") == ("obs_free", "denoiser")
    assert guidance_of(*parse_mode("dps:gaussian")[:1], jacobian=parse_mode("dps:gaussian")[1]) == DPS(jacobian="gaussian")
    with pytest.raises(ValueError, match="only dps"):
        parse_mode("repaint:gaussian")
