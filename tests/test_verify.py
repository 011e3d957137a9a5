"""Verification scores against closed-form answers."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from align_da_ops import verify
from align_da_ops.errors import SchemaError
from align_da_ops.grid import Normalization, gaussian_latitudes
from align_da_ops.obs.batch import ObsBatch

LAT = gaussian_latitudes(8)
CHANNELS = ("geopotential_500", "temperature_850")


def fields(seed=0, shape=(2, 8, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * torch.tensor([300.0, 3.0])[:, None, None]


def test_rmse_of_constant_offset_is_the_offset_and_bias_its_sign():
    truth = fields()
    offset = torch.tensor([50.0, -0.7], dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(verify.wrmse(truth + offset, truth, LAT), torch.tensor([50.0, 0.7], dtype=torch.float64))
    torch.testing.assert_close(verify.bias(truth + offset, truth, LAT), torch.tensor([50.0, -0.7], dtype=torch.float64))
    torch.testing.assert_close(verify.wmae(truth + offset, truth, LAT), torch.tensor([50.0, 0.7], dtype=torch.float64))


def test_latitude_weighting_matches_hand_computation():
    lat = np.array([-60.0, 0.0, 60.0])
    truth = torch.zeros(1, 3, 2, dtype=torch.float64)
    x = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]], dtype=torch.float64)
    # weights cos(lat) / mean = [0.5, 1, 0.5] / (2/3) = [0.75, 1.5, 0.75]
    expected_mse = (0.75 * 1 + 1.5 * 4 + 0.75 * 9) / 3
    assert float(verify.wmse(x, truth, lat)) == pytest.approx(expected_mse, rel=1e-12)
    assert float(verify.wrmse(x, truth, lat)) == pytest.approx(np.sqrt(expected_mse), rel=1e-12)
    assert float(verify.bias(x, truth, lat)) == pytest.approx((0.75 + 3.0 + 2.25) / 3, rel=1e-12)
    # leading dims are kept: a (time, C, lat, lon) input gives (time, C)
    stacked = torch.stack([x, 2 * x])
    assert verify.wrmse(stacked, truth, lat).shape == (2, 1)


def test_acc_perfect_and_negated_anomaly():
    truth, clim = fields(1), fields(2)
    torch.testing.assert_close(verify.acc(truth, truth, clim, LAT), torch.ones(2, dtype=torch.float64))
    negated = clim - (truth - clim)
    torch.testing.assert_close(verify.acc(negated, truth, clim, LAT), -torch.ones(2, dtype=torch.float64))
    # scaled anomalies keep ACC = 1 (correlation, not error)
    scaled = verify.acc(clim + 0.3 * (truth - clim), truth, clim, LAT)
    torch.testing.assert_close(scaled, torch.ones(2, dtype=torch.float64))


def test_normalized_mse_equals_mse_of_normalized_fields():
    truth, x = fields(3), fields(4)
    norm = Normalization(CHANNELS, np.array([5500.0, 270.0]), np.array([300.0, 10.0]), ("a", "b"))
    zx = (x - torch.tensor([5500.0, 270.0])[:, None, None]) / torch.tensor([300.0, 10.0])[:, None, None]
    zt = (truth - torch.tensor([5500.0, 270.0])[:, None, None]) / torch.tensor([300.0, 10.0])[:, None, None]
    assert float(verify.normalized_mse(x, truth, norm)) == pytest.approx(float(((zx - zt) ** 2).mean()), rel=1e-12)
    assert float(verify.normalized_mae(x, truth, norm)) == pytest.approx(float((zx - zt).abs().mean()), rel=1e-12)
    weighted = verify.normalized_mse(x, truth, norm, lat=LAT)
    assert float(weighted) == pytest.approx(float(verify.wmse(zx, zt, LAT).mean()), rel=1e-12)


def test_spread_skill_of_calibrated_ensemble_is_one():
    """Truth and members drawn from the same distribution: spread matches the error of the mean."""
    g = torch.Generator().manual_seed(5)
    n_members, cases = 5, 40
    centre = torch.randn(cases, 2, 32, 64, generator=g, dtype=torch.float64) * 10
    sigma = torch.tensor([2.0, 0.5], dtype=torch.float64)[:, None, None]
    truth = centre + sigma * torch.randn(centre.shape, generator=g, dtype=torch.float64)
    members = centre + sigma * torch.randn(n_members, *centre.shape, generator=g, dtype=torch.float64)
    ss = verify.spread_skill(members, truth, gaussian_latitudes(32))
    assert ss["ratio"].shape == (cases, 2)
    ratio = (ss["spread"] ** 2).mean(0).sqrt() * np.sqrt(6 / 5) / (ss["skill"] ** 2).mean(0).sqrt()
    torch.testing.assert_close(ratio, torch.ones(2, dtype=torch.float64), rtol=0.02, atol=0)
    assert float(ss["ratio"].mean()) == pytest.approx(1.0, abs=0.03)
    under = verify.spread_skill(centre + 0.5 * (members - centre), truth, gaussian_latitudes(32))
    assert float(under["ratio"].mean()) < 0.6  # under-dispersive
    with pytest.raises(ValueError, match=">= 2 members"):
        verify.spread_skill(members[:1], truth, gaussian_latitudes(32))


def test_state_scores_names_and_table():
    truth = fields(6)
    x = truth + torch.tensor([10.0, 1.0], dtype=torch.float64)[:, None, None]
    norm = Normalization(CHANNELS, np.zeros(2), np.array([100.0, 1.0]), ("a", "b"))
    s = verify.state_scores(x, truth, LAT, CHANNELS, norm=norm, climatology=torch.zeros_like(truth),
                            members=torch.stack([x - 1, x + 1]))
    assert s["wrmse_geopotential_500"] == pytest.approx(10.0)
    assert s["bias_temperature_850"] == pytest.approx(1.0)
    assert s["mse_normalized"] == pytest.approx((0.01 + 1.0) / 2)
    assert {"acc_geopotential_500", "spread_temperature_850", "ssr_geopotential_500"} <= set(s)
    t0 = datetime(2000, 1, 1)
    records = [
        {"cycle_time": t0 + timedelta(hours=6 * k), "lead": lead, "method": m,
         **verify.state_scores(x * (1 + k), truth, LAT, CHANNELS)}
        for k in range(2) for lead in (0, 48) for m in ("threedvar", "background_only")
    ]
    table = verify.scores_table(records)
    assert table.index.names == ["cycle_time", "lead", "method"]
    assert table.shape == (8, 4)
    assert table.index.get_level_values("lead").unique().tolist() == [pd.Timedelta(0), pd.Timedelta(hours=48)]
    assert "wrmse_geopotential_500" in table.columns and table.dtypes.eq(float).all()
    means = verify.mean_over_cycles(table)
    assert means.shape == (4, 4)
    with pytest.raises(ValueError, match="duplicate"):
        verify.scores_table(records + records[:1])
    with pytest.raises(ValueError, match="lacks \\['method'\\]"):
        verify.scores_table([{"cycle_time": t0, "lead": 0}])
    assert verify.scores_table([]).empty


def test_observation_scores_stack_o_minus_b_and_o_minus_a():
    obs = ObsBatch.from_columns(
        latitude=np.array([10.0, 20.0]), longitude=np.array([0.0, 90.0]), pressure=np.array([50000.0, 50000.0]),
        time=np.datetime64("2000-01-01T00:00:00"), variable="temperature", value=np.array([250.0, 252.0]),
        error=np.array([1.0, 1.0]), obs_type="radiosonde",
    )
    table = verify.observation_scores(obs, np.array([249.0, 251.0]), np.array([249.5, 251.5]))
    assert table["departure"].tolist() == ["O-B", "O-A"]
    assert table["mean"].tolist() == pytest.approx([1.0, 0.5])
    assert table["jo_per_n"].tolist() == pytest.approx([1.0, 0.25])


def test_shape_errors():
    with pytest.raises(SchemaError, match="do not broadcast"):
        verify.wrmse(fields(), torch.zeros(3, 8, 16), LAT)
    with pytest.raises(SchemaError, match="latitudes"):
        verify.wrmse(fields(), fields(), LAT[:4])
    with pytest.raises(SchemaError, match=r"\(3,\) values for 2 channels"):
        verify.channel_scores("wrmse", torch.zeros(3), CHANNELS)


# -- WeatherBench 2 definitions, cross-checked with the `scores` package -------------------------------
def _xr(x, dims):
    import xarray as xr

    return xr.DataArray(np.asarray(x), dims=dims)


def test_rmse_and_rmse_over_cycles_agree_with_scores():
    import scores.continuous as sc

    weights = _xr(verify._lat_weights(LAT, fields())[:, 0].numpy(), ["lat"])
    x, truth = fields(1, (5, 2, 8, 16)), fields(2, (5, 2, 8, 16))
    ours = verify.wrmse(x, truth, LAT)  # (cycle, C)
    theirs = sc.rmse(_xr(x, ["t", "c", "lat", "lon"]), _xr(truth, ["t", "c", "lat", "lon"]),
                     reduce_dims=["lat", "lon"], weights=weights)
    np.testing.assert_allclose(ours.numpy(), theirs.values, rtol=1e-6)
    over = verify.over_cycles(ours.numpy(), "wrmse_geopotential_500")  # sqrt(mean over cycles of weighted MSE)
    theirs = sc.rmse(_xr(x, ["t", "c", "lat", "lon"]), _xr(truth, ["t", "c", "lat", "lon"]),
                     reduce_dims=["t", "lat", "lon"], weights=weights)
    np.testing.assert_allclose(over, theirs.values, rtol=1e-6)
    assert over != pytest.approx(ours.numpy().mean(0), rel=1e-3)  # not the mean of per-cycle RMSEs


def test_acc_agrees_with_scores_through_the_unit_vector_identity():
    """For anomalies scaled to unit weighted norm, ACC = 1 − MSE/2; the MSE comes from `scores`."""
    import scores.continuous as sc

    x, truth, clim = fields(3), fields(4), fields(5) * 0.5
    ours = verify.acc(x, truth, clim, LAT)
    w = verify._lat_weights(LAT, x)
    ax, at = x - clim, truth - clim
    ax = ax / (w * ax**2).mean(dim=(-2, -1), keepdim=True).sqrt()
    at = at / (w * at**2).mean(dim=(-2, -1), keepdim=True).sqrt()
    mse = sc.mse(_xr(ax, ["c", "lat", "lon"]), _xr(at, ["c", "lat", "lon"]), reduce_dims=["lat", "lon"],
                 weights=_xr(w[:, 0].numpy(), ["lat"]))
    np.testing.assert_allclose(ours.numpy(), 1 - mse.values / 2, rtol=1e-6, atol=1e-9)


def test_crps_matches_the_fair_ensemble_formula():
    members, truth = fields(6, (4, 2, 8, 16)), fields(7)
    n = members.shape[0]
    skill = (members - truth).abs().mean(0)
    spread = (members[:, None] - members[None]).abs().sum((0, 1)) / (2 * n * (n - 1))
    expected = verify.spatial_mean(skill - spread, LAT)
    np.testing.assert_allclose(verify.crps(members, truth, LAT).numpy(), expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=">= 2 members"):
        verify.crps(members[:1], truth, LAT)


def test_rank_histogram_flat_for_exchangeable_truth_and_extreme_for_an_outlier():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(5, 2, 8, 16, generator=g, dtype=torch.float64)
    flat = torch.stack([verify.rank_histogram(torch.cat([draws[:k], draws[k + 1:]]), draws[k], LAT) for k in range(5)])
    torch.testing.assert_close(flat.mean(0), torch.full((2, 5), 0.2, dtype=torch.float64))  # exact by symmetry
    high = verify.rank_histogram(draws[:4], draws[:4].max(0).values + 1, LAT)
    torch.testing.assert_close(high[:, -1], torch.ones(2, dtype=torch.float64))


def test_symmetric_climatology_is_zonal_and_hemispheric_by_construction():
    channels = ("geopotential_500", "v_component_of_wind_500")
    raw = fields(8)
    clim = verify.symmetric_climatology(raw, channels)
    assert torch.equal(clim, clim[..., :1].expand_as(clim))  # zonally symmetric
    torch.testing.assert_close(clim[0], clim[0].flip(0))  # z: symmetric about the equator
    torch.testing.assert_close(clim[1], -clim[1].flip(0))  # v: antisymmetric
    torch.testing.assert_close(verify.symmetric_climatology(clim, channels), clim)  # a projection
    zonal_mean = raw.mean(-1).mean(-1)  # equal-area rows of a symmetric grid: the global mean is kept
    torch.testing.assert_close(clim[0].mean(), zonal_mean[0])


def test_imbalance_ratio_zero_for_geostrophic_wind_and_half_for_doubled_wind():
    from test_rewards import LAYOUT, balanced_state

    x, lat, lon = balanced_state(64, 128)
    assert float(verify.imbalance_ratio(x, LAYOUT, lat, lon, 500)) < 0.01
    u = LAYOUT.channel_index("u_component_of_wind", 500)
    doubled = x.clone()
    doubled[u] *= 2
    assert float(verify.imbalance_ratio(doubled, LAYOUT, lat, lon, 500)) == pytest.approx(0.5, abs=0.01)


def test_patch_edge_ratio_is_one_without_patches_and_large_with_seams():
    from align_da_ops.verify import patch_edge_ratio

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 5, 32, 64, generator=g, dtype=torch.float64)  # stationary: edges are like any other place
    for patch in (2, 4):
        assert patch_edge_ratio(noise, patch) == pytest.approx(torch.ones(3), abs=0.08)
    latent = torch.randn(3, 5, 8, 16, generator=g, dtype=torch.float64)
    blocks = latent.repeat_interleave(4, -2).repeat_interleave(4, -1)  # 4x4 patches, one value each
    assert torch.isinf(patch_edge_ratio(blocks, 4)).all()
    seams = blocks + 0.1 * noise  # patches with texture inside: seams stand out at every 4th cell only
    r4, r2 = patch_edge_ratio(seams, 4), patch_edge_ratio(seams, 2)
    assert (r4 > 5).all() and (r2 > 1.5).all() and (r2 < r4).all()
    lat, lon = torch.meshgrid(torch.linspace(0, 1, 32, dtype=torch.float64), torch.linspace(0, 1, 65, dtype=torch.float64)[:-1],
                              indexing="ij")
    phases = torch.rand(3, 5, 4, generator=g, dtype=torch.float64)[..., None, None] * 6.283
    k = torch.arange(1, 5, dtype=torch.float64)[:, None, None]
    large_scale = (torch.sin(6.283 * k * lon + phases) * torch.cos(3.14 * k * lat)).sum(-3)  # wavenumbers 1-4
    assert patch_edge_ratio(large_scale, 4) == pytest.approx(torch.ones(3), abs=0.05)  # smooth, not tied to patches
