"""3D-Var: equals the dense float64 BLUE on a small linear-Gaussian problem, plus limiting cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from align_da_ops.analysis.base import AnalysisMethod, AnalysisResult
from align_da_ops.analysis.threedvar import (
    ThreeDVar,
    ThreeDVarConfig,
    conjugate_gradient,
    covariance_from_config,
    operator_adjoint,
    sigma_for_channels,
)
from align_da_ops.errors import ObservationError, SchemaError
from align_da_ops.grid import StateLayout, gaussian_latitudes, longitudes
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.operators import GridInterpolator

LAYOUT = StateLayout(upper_air=("temperature",), surface=("surface_pressure",), levels=(500, 850))
LAT, LON = gaussian_latitudes(8), longitudes(16)
CFG = ThreeDVarConfig(
    sigma_b={"temperature": 1.5, "surface_pressure": 150.0}, length_scale_km=2500.0, vertical_length_lnp=0.6,
    tolerance=1e-12, max_iterations=500,
)


def make_obs(lat, lon, variable, pressure_hpa, value, error) -> ObsBatch:
    n = len(lat)
    return ObsBatch.from_columns(
        latitude=np.asarray(lat, float), longitude=np.asarray(lon, float),
        pressure=np.asarray(pressure_hpa, float) * 100.0, time=np.full(n, np.datetime64("2000-01-01T00:00:00", "s")),
        variable=np.asarray(variable), value=np.asarray(value, float), error=np.asarray(error, float), obs_type="test",
    )


def background() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([250.0, 280.0, 1.0e5], dtype=torch.float64)[:, None, None]
    spread = torch.tensor([2.0, 2.0, 200.0], dtype=torch.float64)[:, None, None]
    return base + torch.randn(3, 8, 16, generator=g, dtype=torch.float64) * spread


def method(cfg: ThreeDVarConfig = CFG) -> ThreeDVar:
    return ThreeDVar.from_config(cfg, LAYOUT.channels, LAT, LON)


def dense_matrices(var: ThreeDVar, operator) -> tuple[np.ndarray, np.ndarray]:
    """Dense B (from the B operator on unit vectors) and H (from the operator on unit vectors)."""
    shape = var.covariance.grid_shape
    n = int(np.prod(shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    b = var.covariance.operator().apply(eye).reshape(n, n).numpy()
    h = operator(eye).numpy().T  # (n_obs, n)
    return b, h


def blue(xb: torch.Tensor, b: np.ndarray, h: np.ndarray, obs: ObsBatch) -> np.ndarray:
    """x_a = x_b + B Hᵀ (H B Hᵀ + R)⁻¹ (y − H x_b), dense float64."""
    x = xb.numpy().reshape(-1)
    r = np.diag(obs.error**2)
    gain = b @ h.T @ np.linalg.solve(h @ b @ h.T + r, np.eye(len(obs)))
    return (x + gain @ (obs.value - h @ x)).reshape(xb.shape)


def mixed_obs(xb: torch.Tensor) -> ObsBatch:
    """Off-grid, between-level and surface observations with departures of a few σ_o."""
    obs = make_obs(
        lat=[-61.3, -20.0, 5.5, 33.3, 47.0, 70.2, 12.0],
        lon=[10.0, 100.5, 359.0, 200.0, 47.0, 300.0, 150.0],
        variable=["temperature"] * 4 + ["surface_pressure"] * 2 + ["temperature"],
        pressure_hpa=[500.0, 850.0, 700.0, 600.0, np.nan, np.nan, 850.0],
        value=np.zeros(7), error=[1.0, 0.5, 0.8, 1.2, 100.0, 80.0, 0.7],
    )
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    hxb = op(xb).numpy()
    return obs.replace(value=hxb + np.array([2.0, -1.0, 1.5, -2.5, 300.0, -150.0, 0.5]))


def test_threedvar_equals_dense_blue():
    var, xb = method(), background()
    obs = mixed_obs(xb)
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    result = var.analyse(xb, obs, op, torch.Generator())
    b, h = dense_matrices(var, op)
    expected = blue(xb, b, h, obs)
    increment = expected - xb.numpy()
    got = result.analysis.numpy() - xb.numpy()
    np.testing.assert_allclose(got, increment, rtol=0, atol=1e-9 * np.abs(increment).max())
    d = result.diagnostics
    assert d["converged"] == 1.0 and d["iterations"] <= len(obs) + 1  # CG: at most rank(HU)+1 steps
    assert d["jo_per_n_analysis"] < d["jo_per_n_background"] and d["j_final"] < d["j_initial"]
    assert d["grad_norm_reduction"] <= 1e-12 and d["n_obs"] == 7.0


def test_autograd_adjoint_matches_stencil_adjoint():
    xb = background()
    obs = mixed_obs(xb)
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    r = torch.linspace(-1.0, 2.0, len(obs), dtype=torch.float64)
    x = torch.randn(xb.shape, dtype=torch.float64)
    stencil = operator_adjoint(op, tuple(xb.shape), torch.float64, xb.device)
    autograd = operator_adjoint(lambda s: op(s), tuple(xb.shape), torch.float64, xb.device)
    assert float((op(x) * r).sum()) == pytest.approx(float((x * stencil(r)).sum()), rel=1e-12)
    torch.testing.assert_close(stencil(r), autograd(r))
    var = method()
    with torch.inference_mode():  # the engine may run analyses under inference mode
        via_autograd = var.analyse(xb, obs, lambda s: op(s), torch.Generator()).analysis
    torch.testing.assert_close(via_autograd, var.analyse(xb, obs, op, torch.Generator()).analysis)


def test_no_observations_returns_background():
    xb = background()
    empty = ObsBatch.empty()
    result = method().analyse(xb, empty, GridInterpolator(LAYOUT, LAT, LON).prepare(empty), torch.Generator())
    assert torch.equal(result.analysis, xb) and result.analysis is not xb
    assert result.diagnostics["n_obs"] == 0.0 and result.diagnostics["iterations"] == 0.0


def test_observation_with_huge_error_gives_no_increment():
    xb = background()
    obs = make_obs([30.0], [45.0], ["temperature"], [500.0], [0.0], [1.0e6])
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    obs = obs.replace(value=op(xb).numpy() + 5.0)
    xa = method().analyse(xb, obs, op, torch.Generator()).analysis
    assert (xa - xb).abs().max() < 1e-10  # gain ~ σ_b²/σ_o² ~ 2e-12


def test_perfect_observation_at_grid_point_is_drawn_to():
    xb = background()
    j, i = 5, 3
    c = LAYOUT.channel_index("temperature", 850)
    target = float(xb[c, j, i]) + 3.0
    obs = make_obs([LAT[j]], [LON[i]], ["temperature"], [850.0], [target], [1.0e-3])
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    xa = method().analyse(xb, obs, op, torch.Generator()).analysis
    # Gain σ_b²/(σ_b² + σ_o²) = 2.25/(2.25 + 1e-6): the analysis lands within 2e-6 of the observation.
    assert abs(float(xa[c, j, i]) - target) < 3.0 * 2e-6
    # The increment spreads to neighbours (correlation) and to 500 hPa (vertical correlation), decaying.
    assert 0 < float(xa[c, j, (i + 1) % 16] - xb[c, j, (i + 1) % 16]) < 3.0
    assert 0 < float(xa[c - 1, j, i] - xb[c - 1, j, i]) < 3.0


def test_float32_and_config_precision():
    xb = background()
    obs = mixed_obs(xb)
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    f64 = method().analyse(xb, obs, op, torch.Generator()).analysis
    cfg32 = CFG.model_copy(update={"precision": "float32", "tolerance": 1e-5})
    f32 = method(cfg32).analyse(xb.float(), obs, op, torch.Generator()).analysis
    assert f32.dtype == torch.float32
    inc64, inc32 = f64 - xb, f32.double() - xb.float().double()
    assert (inc32 - inc64).abs().max() < 2e-3 * inc64.abs().max() + 0.05  # float32 rounding of 1e5 Pa


def test_satisfies_protocol_and_provenance(tmp_path):
    var = method()
    assert isinstance(var, AnalysisMethod)
    assert var.provenance()["covariance_hash"] == var.covariance.content_hash()
    path = var.covariance.save(tmp_path / "b.npz")
    loaded = ThreeDVar.from_config(ThreeDVarConfig(covariance=path), LAYOUT.channels, LAT, LON)
    assert loaded.covariance_hash == var.covariance_hash
    scaled = covariance_from_config(ThreeDVarConfig(covariance=path, b_scale=2.0), LAYOUT.channels, LAT, LON)
    np.testing.assert_allclose(scaled.variances(), 2.0 * var.covariance.variances())
    with pytest.raises(SchemaError, match="has channels"):
        covariance_from_config(ThreeDVarConfig(covariance=path), ("temperature_500",), LAT, LON)
    with pytest.raises(SchemaError, match="differs from the state's 8x16"):
        covariance_from_config(ThreeDVarConfig(covariance=path), LAYOUT.channels, LAT, LON + 1.0)


def test_bad_inputs_raise_clear_errors():
    var, xb = method(), background()
    obs = mixed_obs(xb)
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    with pytest.raises(SchemaError, match=r"background shape \(3, 8, 15\)"):
        var.analyse(xb[:, :, :15], obs, op, torch.Generator())
    with pytest.raises(ObservationError, match="errors > 0"):
        var.analyse(xb, obs.replace(error=np.zeros(len(obs))), op, torch.Generator())
    with pytest.raises(ObservationError, match="not passed QC"):
        var.analyse(xb, obs.replace(qc=np.full(len(obs), 2, np.int16)), op, torch.Generator())
    nan_bg = xb.clone()
    nan_bg[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        var.analyse(nan_bg, obs, op, torch.Generator())
    with pytest.raises(ValueError, match="no entry for channel 'surface_pressure'"):
        sigma_for_channels(LAYOUT.channels, {"temperature": 1.0})
    overrides = {"temperature": 1.0, "temperature_850": 2.0, "surface_pressure": 3.0}
    assert sigma_for_channels(LAYOUT.channels, overrides).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValidationError):
        ThreeDVarConfig(kind="threedvar", tolerance=2.0)
    with pytest.raises(ValidationError):
        ThreeDVarConfig(unknown=1)
    with pytest.raises(ValidationError, match="'temprature'"):
        ThreeDVarConfig(sigma_b={"temprature": 1.0})
    with pytest.raises(ValidationError, match="must be >= 0"):
        ThreeDVarConfig(sigma_b={"temperature_500": -1.0})


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(6, generator=g, dtype=torch.float64)
    x, iterations, reduction = conjugate_gradient(lambda v: a @ v, rhs, 50, 1e-13)
    torch.testing.assert_close(x, torch.linalg.solve(a, rhs))
    assert iterations <= 7 and reduction <= 1e-13
    assert isinstance(AnalysisResult(analysis=x), AnalysisResult)


@pytest.mark.gpu
def test_threedvar_nmc_and_scores_on_cuda():
    """Device follows the inputs: CUDA results match CPU (run with `pytest -m gpu`)."""
    if not torch.cuda.is_available():
        pytest.fail("gpu tests need a CUDA device (deselect with -m 'not gpu')")
    from align_da_ops import verify
    from align_da_ops.analysis.covariance import estimate_nmc

    cuda = torch.device("cuda")
    var, xb = method(), background()
    obs = mixed_obs(xb)
    op = GridInterpolator(LAYOUT, LAT, LON).prepare(obs, cuda)
    cpu = var.analyse(xb, obs, GridInterpolator(LAYOUT, LAT, LON).prepare(obs), torch.Generator()).analysis
    gpu = var.analyse(xb.to(cuda), obs, op, torch.Generator(cuda))
    assert gpu.analysis.device.type == "cuda"
    torch.testing.assert_close(gpu.analysis.cpu(), cpu, rtol=1e-10, atol=1e-8)
    b_cuda = var.covariance.operator(cuda)
    samples = b_cuda.sqrt(torch.randn(20, *b_cuda.control_shape, device=cuda, dtype=torch.float64))
    est = estimate_nmc(samples, LAYOUT.channels, LAT, LON)
    assert np.all(est.variances() > 0)
    assert verify.wrmse(gpu.analysis, xb.to(cuda), LAT).device.type == "cuda"
