"""LETKF: the ETKF limit equals the Kalman filter with the sample covariance; one observation gives the
closed-form rank-one update; localisation confines increments; inflation and RTPS do what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from align_da_ops.analysis.base import EnsembleAnalysisMethod
from align_da_ops.analysis.letkf import LETKF, LETKFConfig
from align_da_ops.analysis.localisation import gaspari_cohn, great_circle_km
from align_da_ops.errors import SchemaError
from align_da_ops.grid import StateLayout, gaussian_latitudes, longitudes
from align_da_ops.obs.operators import GridInterpolator

from test_threedvar import make_obs

LAYOUT = StateLayout(upper_air=("temperature", "u_component_of_wind"), surface=("surface_pressure",), levels=(500, 850))
LAT, LON = gaussian_latitudes(8), longitudes(16)
K = 6
NO_LOCALISATION = LETKFConfig(members=K, horizontal_length_km=None, vertical_length_lnp=None, rtps=0.0, column_chunk=37)


def ensemble(k: int = K, seed: int = 0) -> torch.Tensor:
    """(k, C, lat, lon) float64 members with smooth-ish, channel-correlated perturbations."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([250.0, 280.0, 5.0, 3.0, 1.0e5], dtype=torch.float64)[:, None, None]
    scale = torch.tensor([2.0, 2.0, 3.0, 3.0, 200.0], dtype=torch.float64)[:, None, None]
    common = torch.randn(k, 1, 8, 16, generator=g, dtype=torch.float64)
    own = torch.randn(k, 5, 8, 16, generator=g, dtype=torch.float64)
    return base + scale * (0.7 * common + 0.5 * own)


def observations():
    lat = [10.0, -33.3, 47.0, 60.0, -5.0, 21.0, 21.0]
    lon = [30.0, 100.5, 250.0, 359.0, 181.0, 12.0, 12.0]
    var = ["temperature", "temperature", "u_component_of_wind", "surface_pressure", "temperature", "u_component_of_wind",
           "surface_pressure"]
    p = [500.0, 700.0, 850.0, np.nan, 850.0, 600.0, np.nan]
    value = [251.0, 279.0, 6.0, 100100.0, 281.5, 4.0, 99950.0]
    err = [1.0, 0.8, 1.5, 120.0, 0.5, 2.0, 90.0]
    return make_obs(lat, lon, var, p, value, err)


def letkf(cfg: LETKFConfig = NO_LOCALISATION) -> LETKF:
    return LETKF(cfg, LAYOUT.channels, LAYOUT.levels, LAT, LON)


def kalman_sample(members: torch.Tensor, obs, operator):
    """Dense float64 EnKF/BLUE with the sample covariance: (mean, covariance) of the analysis."""
    k = members.shape[0]
    x = members.reshape(k, -1).numpy()
    n = x.shape[1]
    h = operator(torch.eye(n, dtype=torch.float64).reshape(n, *members.shape[1:])).numpy().T  # (n_obs, n)
    xm = x.mean(0)
    xp = (x - xm).T
    pb = xp @ xp.T / (k - 1)
    r = np.diag(obs.error**2)
    gain = pb @ h.T @ np.linalg.inv(h @ pb @ h.T + r)
    mean = xm + gain @ (obs.value - h @ xm)
    cov = (np.eye(n) - gain @ h) @ pb
    return mean, cov


def test_is_an_ensemble_method():
    assert isinstance(letkf(), EnsembleAnalysisMethod)


def test_without_localisation_equals_the_kalman_filter_with_the_sample_covariance():
    members, obs = ensemble(), observations()
    operator = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    result = letkf().analyse_members(members, obs, operator)
    mean, cov = kalman_sample(members, obs, operator)
    xa = result.members.reshape(K, -1).numpy()
    np.testing.assert_allclose(result.analysis.reshape(-1).numpy(), mean, rtol=0, atol=1e-10 * np.abs(mean).max())
    pa = np.cov(xa.T, ddof=1)
    np.testing.assert_allclose(pa, cov, rtol=0, atol=1e-10 * np.abs(cov).max())
    assert result.analysis.dtype == torch.float64 and result.members.shape == members.shape


def test_one_observation_gives_the_rank_one_update():
    members = ensemble()
    obs = make_obs([12.0], [40.0], ["temperature"], [500.0], [253.0], [0.7])
    operator = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    result = letkf().analyse_members(members, obs, operator)
    hx = operator(members)[:, 0]
    x = members.reshape(K, -1)
    xp, hp = x - x.mean(0), hx - hx.mean()
    cov_xh = (xp * hp[:, None]).sum(0) / (K - 1)  # P_b Hᵀ
    var_h = float((hp**2).sum() / (K - 1))  # H P_b Hᵀ
    expected = x.mean(0) + cov_xh * (253.0 - float(hx.mean())) / (var_h + 0.49)
    np.testing.assert_allclose(result.analysis.reshape(-1).numpy(), expected.numpy(), atol=1e-9)


def test_zero_length_localisation_returns_the_background():
    members, obs = ensemble(), observations()  # no observation sits on a grid point
    operator = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    result = letkf(LETKFConfig(members=K, horizontal_length_km=1e-6, rtps=0.0)).analyse_members(members, obs, operator)
    torch.testing.assert_close(result.members, members, rtol=0, atol=1e-9)


def test_localisation_confines_the_increment_to_twice_the_half_width():
    members = ensemble()
    obs = make_obs([0.0], [0.0], ["temperature"], [500.0], [260.0], [0.5])
    operator = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    cfg = LETKFConfig(members=K, horizontal_length_km=1500.0, vertical_length_lnp=None, rtps=0.0)
    result = letkf(cfg).analyse_members(members, obs, operator)
    scale = members.std(0).amax((1, 2))[:, None, None]
    increment = ((result.analysis - members.mean(0)).abs() / scale).amax(0)  # (lat, lon), in units of the spread
    lat, lon = np.meshgrid(LAT, LON, indexing="ij")
    dist = great_circle_km(np.zeros(1), np.zeros(1), lat.ravel(), lon.ravel()).reshape(lat.shape)
    assert float(increment[dist >= 3000.0].max()) < 1e-12  # round-off only
    assert float(increment[dist < 2000.0].min()) > 1e-3  # the nearest grid points, ~1300 km away


def test_vertical_localisation_leaves_far_levels_alone():
    members = ensemble()
    obs = make_obs([0.0], [10.0], ["temperature"], [850.0], [290.0], [0.5])
    operator = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    cfg = LETKFConfig(members=K, horizontal_length_km=None, vertical_length_lnp=0.2, rtps=0.0)  # support ±0.4 in ln p
    result = letkf(cfg).analyse_members(members, obs, operator)
    increment = ((result.analysis - members.mean(0)).abs() / members.std(0)).flatten(1).amax(1)
    channels = LAYOUT.channels
    assert float(increment[channels.index("temperature_500")]) < 1e-12  # ln(850/500) = 0.53 > 0.4
    assert float(increment[channels.index("temperature_850")]) > 1e-3
    assert float(increment[channels.index("surface_pressure")]) > 1e-3  # ln(1013/850) = 0.18


def test_rtps_restores_the_prior_spread_and_inflation_widens_the_update():
    members, obs = ensemble(), observations()
    operator = GridInterpolator(LAYOUT, LAT, LON).prepare(obs)
    plain = letkf().analyse_members(members, obs, operator)
    full = letkf(NO_LOCALISATION.model_copy(update={"rtps": 1.0})).analyse_members(members, obs, operator)
    torch.testing.assert_close(full.members.std(0), members.std(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(full.analysis, plain.analysis, rtol=0, atol=1e-9)  # RTPS leaves the mean
    inflated = letkf(NO_LOCALISATION.model_copy(update={"inflation": 1.5})).analyse_members(members, obs, operator)
    # inflating the prior by rho equals the Kalman filter with rho * P_b
    mean, _ = kalman_sample(members.mean(0) + (members - members.mean(0)) * 1.5**0.5, obs, operator)
    np.testing.assert_allclose(inflated.analysis.reshape(-1).numpy(), mean, atol=1e-9 * np.abs(mean).max())


def test_no_observations_returns_the_background_and_float32_stays_float32():
    members = ensemble().float()
    obs = observations().select(np.zeros(7, bool))
    result = letkf().analyse_members(members, obs, GridInterpolator(LAYOUT, LAT, LON).prepare(obs))
    assert result.members.dtype == torch.float32
    torch.testing.assert_close(result.members, members)


def test_wrong_ensemble_shape_is_a_schema_error():
    with pytest.raises(SchemaError, match="background ensemble shape"):
        letkf().analyse_members(ensemble(k=4), observations(), None)


def test_gaspari_cohn_is_a_continuous_taper_with_compact_support():
    r = torch.tensor([0.0, 0.5, 1.0 - 1e-12, 1.0, 1.0 + 1e-12, 1.5, 2.0, 3.0], dtype=torch.float64)
    g = gaspari_cohn(r)
    assert float(g[0]) == 1.0 and float(g[6]) == 0.0 and float(g[7]) == 0.0
    assert abs(float(g[2] - g[4])) < 1e-9 and abs(float(g[3]) - 5 / 24) < 1e-12
    assert torch.all(g[:-1] >= g[1:])  # monotone


def test_config_rejects_meaningless_values():
    for bad in ({"members": 1}, {"rtps": 1.5}, {"inflation": 0.5}, {"horizontal_length_km": 0}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            LETKFConfig(**bad)
