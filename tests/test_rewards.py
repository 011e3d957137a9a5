"""Align-DA rewards against closed-form oracles: balanced fields, isothermal columns, hand-computed scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_da_ops import grid
from align_da_ops.align import rewards
from align_da_ops.errors import SchemaError

UPPER = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")
LAYOUT = grid.StateLayout(UPPER, ("surface_pressure",), (250, 500, 700, 850))


def balanced_state(nlat: int, nlon: int, layout: grid.StateLayout = LAYOUT, gaussian: bool = True):
    """A state whose wind is the exact (analytic) geostrophic wind of a smooth Φ(φ, λ): zonal jet + wave 4.

    Φ = Φ0_k + A cos 2φ + B cos²φ sin 4λ on each level k (amplitudes growing with pressure level index);
    T = 250 K; surface pressure 1000 hPa. Returns (state (C, lat, lon) float64, lat, lon).
    """
    lat = grid.gaussian_latitudes(nlat) if gaussian else grid.equiangular_latitudes(nlat)
    lon = grid.longitudes(nlon)
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    f, a = 2 * rewards.OMEGA * np.sin(phi), rewards.EARTH_RADIUS_M
    fields = {name: [] for name in UPPER}
    for k, _ in enumerate(layout.levels):
        amp_a, amp_b, m = 6000.0 * (1 + 0.2 * k), 1500.0, 4
        z = 5.5e4 - 1.0e4 * k + amp_a * np.cos(2 * phi) + amp_b * np.cos(phi) ** 2 * np.sin(m * lam)
        dz_dphi = -2 * amp_a * np.sin(2 * phi) - 2 * amp_b * np.cos(phi) * np.sin(phi) * np.sin(m * lam)
        dz_dlam = amp_b * m * np.cos(phi) ** 2 * np.cos(m * lam)
        fields["geopotential"].append(z)
        fields["temperature"].append(np.full_like(z, 250.0))
        fields["u_component_of_wind"].append(-dz_dphi / (f * a))
        fields["v_component_of_wind"].append(dz_dlam / (f * a * np.cos(phi)))
    chans = [c for name in layout.upper_air for c in fields[name]]
    chans += [np.full((nlat, nlon), 1.0e5) for _ in layout.surface]
    return torch.tensor(np.stack(chans)), lat, lon


def imbalance_of_balanced(nlat: int, nlon: int, gaussian: bool = True) -> torch.Tensor:
    x, lat, lon = balanced_state(nlat, nlon, gaussian=gaussian)
    return rewards.geostrophic_imbalance(x, LAYOUT, lat, lon)


def isothermal_state(layout: grid.StateLayout, nlat: int = 16, nlon: int = 32, seed: int = 0):
    """Φ(p) = R_d T ln(p_s / p) with T varying in the horizontal but not in the vertical (exactly hydrostatic)."""
    gen = torch.Generator().manual_seed(seed)
    t_col = 220.0 + 60.0 * torch.rand(nlat, nlon, generator=gen, dtype=torch.float64)
    x = torch.zeros(layout.n_channels, nlat, nlon, dtype=torch.float64)
    for p in layout.levels:
        x[layout.channel_index("geopotential", p)] = rewards.R_DRY * t_col * np.log(1000.0 / p)
        x[layout.channel_index("temperature", p)] = t_col
        x[layout.channel_index("u_component_of_wind", p)] = 10.0
        x[layout.channel_index("v_component_of_wind", p)] = -5.0
    return x, grid.gaussian_latitudes(nlat), grid.longitudes(nlon)


def with_wind_noise(x: torch.Tensor, layout: grid.StateLayout, noise: torch.Tensor, amplitude: float) -> torch.Tensor:
    x = x.clone()
    for name in ("u_component_of_wind", "v_component_of_wind"):
        for p in layout.levels:
            i = layout.channel_index(name, p)
            x[..., i, :, :] += amplitude * noise[..., i, :, :]
    return x


# -- constants and finite differences ---------------------------------------------------------------
def test_constants_are_the_nature_runs():
    from dinosaur_torch import scales

    assert rewards.R_DRY == pytest.approx(scales.IDEAL_GAS_CONSTANT.magnitude, rel=1e-12)
    assert rewards.OMEGA == pytest.approx(scales.ANGULAR_VELOCITY.magnitude, rel=1e-12)
    assert rewards.EARTH_RADIUS_M == pytest.approx(scales.RADIUS.magnitude, rel=1e-12)


@pytest.mark.parametrize("descending", [False, True])
def test_meridional_derivative_exact_for_quadratics_on_gaussian_grid(descending):
    lat = grid.gaussian_latitudes(12)
    if descending:
        lat = lat[::-1].copy()
    phi = np.deg2rad(lat)
    x = torch.tensor(3 * phi**2 - phi + 1)[:, None].expand(12, 5)
    d = rewards.meridional_derivative(x, lat)
    torch.testing.assert_close(d, torch.tensor(6 * phi - 1)[:, None].expand(12, 5), rtol=0, atol=1e-12)


def test_zonal_derivative_is_periodic_centred_difference():
    lon = grid.longitudes(16)
    x = torch.tensor(np.sin(np.deg2rad(lon)))
    dlam = np.deg2rad(22.5)
    expected = np.cos(np.deg2rad(lon)) * np.sin(dlam) / dlam  # the centred difference of sin, exactly
    torch.testing.assert_close(rewards.zonal_derivative(x, lon), torch.tensor(expected))


# -- geostrophic imbalance --------------------------------------------------------------------------
def test_analytic_geostrophic_field_is_balanced_to_second_order():
    d_coarse = imbalance_of_balanced(32, 64)
    d_fine = imbalance_of_balanced(64, 128)
    # Measured 0.0159 and 0.0040: the finite-difference error of a wave-4 / cos 2φ field, O(Δ²).
    assert d_coarse < 0.05
    assert d_fine < 0.01
    assert d_fine < d_coarse / 3.5


def test_geostrophic_imbalance_independent_of_latitude_order_and_grid_kind():
    x, lat, lon = balanced_state(32, 64)
    d = rewards.geostrophic_imbalance(x, LAYOUT, lat, lon)
    d_flipped = rewards.geostrophic_imbalance(x.flip(-2), LAYOUT, lat[::-1].copy(), lon)
    torch.testing.assert_close(d, d_flipped, rtol=1e-12, atol=0)
    d_equiangular = imbalance_of_balanced(32, 64, gaussian=False)
    assert d_equiangular == pytest.approx(float(d), rel=0.05)


def test_geo_score_is_one_for_the_reference_and_falls_with_wind_noise():
    x, lat, lon = balanced_state(32, 64)
    d_truth = rewards.geostrophic_imbalance(x, LAYOUT, lat, lon)
    assert rewards.geo_score(rewards.geostrophic_imbalance(x.clone(), LAYOUT, lat, lon), d_truth) == 1.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    amplitudes = [0.5, 1.0, 2.0, 4.0, 8.0]  # m/s
    noisy = [with_wind_noise(x, LAYOUT, noise, a) for a in amplitudes]
    d = torch.stack([rewards.geostrophic_imbalance(y, LAYOUT, lat, lon) for y in noisy])
    scores = rewards.geo_score(d, d_truth)
    assert torch.all(d.diff() > 0) and torch.all(scores.diff() < 0)
    assert torch.all((scores > 0) & (scores < 1))
    # Closeness to the truth, not balance: a sample more balanced than a noisy truth scores below 1 too.
    noisy_truth = rewards.geostrophic_imbalance(with_wind_noise(x, LAYOUT, noise, 4.0), LAYOUT, lat, lon)
    assert rewards.geo_score(d_truth, noisy_truth) < 1.0


def test_geostrophic_levels_absent_are_skipped_none_is_an_error():
    x, lat, lon = balanced_state(16, 32)
    d_500 = rewards.geostrophic_imbalance(x, LAYOUT, lat, lon, levels=(500, 300))
    assert torch.isfinite(d_500)
    with pytest.raises(SchemaError, match="geostrophic levels"):
        rewards.geostrophic_imbalance(x, LAYOUT, lat, lon, levels=(300, 200))
    with pytest.raises(SchemaError, match="no latitude row"):
        rewards.geostrophic_imbalance(x, LAYOUT, lat, lon, min_abs_latitude=89.9)


def test_tropics_excluded_and_gradients_finite_with_an_equator_and_pole_rows():
    lat = grid.equiangular_latitudes(17, with_poles=True)  # rows at 0° and ±90°
    lon = grid.longitudes(32)
    x, _, _ = isothermal_state(LAYOUT, nlat=17, nlon=32)  # values only: f = 0 and cos φ = 0 rows must not leak NaN
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x = with_wind_noise(x, LAYOUT, noise, 5.0).requires_grad_(True)
    d = rewards.geostrophic_imbalance(x, LAYOUT, lat, lon)
    d.backward()
    assert torch.isfinite(d) and torch.isfinite(x.grad).all()


# -- hydrostatic imbalance --------------------------------------------------------------------------
def test_isothermal_atmosphere_is_hydrostatic_and_temperature_noise_unbalances_it():
    x, lat, _ = isothermal_state(LAYOUT)
    d_h = rewards.hydrostatic_imbalance(x, LAYOUT, lat)
    assert d_h < 1e-12
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t_channels = [LAYOUT.channel_index("temperature", p) for p in LAYOUT.levels]
    values = []
    for amplitude in (0.5, 1.0, 2.0, 4.0):  # K
        noisy = x.clone()
        noisy[t_channels] += amplitude * noise[t_channels]
        values.append(rewards.hydrostatic_imbalance(noisy, LAYOUT, lat))
    values = torch.stack(values)
    assert torch.all(values.diff() > 0) and values[0] > 1e-4
    scores = rewards.hydro_score(values, d_h)
    assert torch.all(scores.diff() < 0) and rewards.hydro_score(d_h, d_h) == 1.0


def test_hydrostatic_imbalance_uses_levels_in_range_in_pressure_order():
    top_down = grid.StateLayout(UPPER, (), (100, 250, 500, 850, 1000))
    bottom_up = grid.StateLayout(UPPER, (), (1000, 850, 500, 250, 100))
    x, lat, _ = isothermal_state(top_down)
    y = torch.zeros_like(x)
    for name in UPPER:
        for p in top_down.levels:
            y[bottom_up.channel_index(name, p)] = x[top_down.channel_index(name, p)]
    # Break balance only below 850 hPa: outside the default range, so invisible by default.
    y[bottom_up.channel_index("temperature", 1000)] += 30.0
    assert rewards.hydrostatic_imbalance(y, bottom_up, lat) < 1e-12
    assert rewards.hydrostatic_imbalance(y, bottom_up, lat, max_pressure=1000.0) > 1e-3
    with pytest.raises(SchemaError, match=">= 2 levels"):
        rewards.hydrostatic_imbalance(y, bottom_up, lat, min_pressure=300.0, max_pressure=600.0)


# -- accuracy and Bradley–Terry ---------------------------------------------------------------------
def test_wrmse_per_variable_of_a_constant_difference_is_the_constant():
    truth, lat, _ = balanced_state(16, 32)
    offsets = torch.arange(1, LAYOUT.n_channels + 1, dtype=torch.float64)
    sample = truth + offsets[:, None, None]
    variables = (("geopotential", 500), ("temperature", 250), ("v_component_of_wind", rewards.LOWEST))
    variables += (("surface_pressure", None),)
    got = rewards.wrmse_per_variable(sample, truth, LAYOUT, lat, variables)
    resolved = (("geopotential", 500), ("temperature", 250), ("v_component_of_wind", 850), ("surface_pressure", None))
    want = [LAYOUT.channel_index(n, p) + 1 for n, p in resolved]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    lowest = rewards.resolve_variables(rewards.DEFAULT_VARIABLES, LAYOUT)[-2:]
    assert lowest == (("u_component_of_wind", 850), ("v_component_of_wind", 850))
    with pytest.raises(SchemaError, match="temperature_300"):
        rewards.wrmse_per_variable(sample, truth, LAYOUT, lat, (("temperature", 300),))


def test_bradley_terry_orders_by_error_and_is_scale_free():
    base = torch.tensor([[1.0, 2.0e2, 0.5, 3.0]], dtype=torch.float64)  # four variables, very different units
    errors = torch.arange(1, 6, dtype=torch.float64)[:, None] * base
    r = rewards.bradley_terry(errors)
    assert r.shape == (5,) and torch.all(r.diff() < 0) and torch.all((r > 0) & (r < 1))
    torch.testing.assert_close(rewards.bradley_terry(errors * torch.tensor([1.0, 1e3, 1e-3, 7.0])), r)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(rewards.bradley_terry(errors[perm]), r[perm])
    half = torch.full((6,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(rewards.bradley_terry(torch.full((6, 3), 2.5)), half)
    torch.testing.assert_close(rewards.bradley_terry(torch.zeros(3, 2)), torch.full((3,), 0.5, dtype=torch.float64))
    # By hand, N = 2, M = 1: errors (1, 3) normalise to (0.5, 1.5); R = (σ(1), σ(−1)).
    by_hand = torch.sigmoid(torch.tensor([1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(rewards.bradley_terry(torch.tensor([[1.0], [3.0]])), by_hand)
    with pytest.raises(ValueError, match="N >= 2"):
        rewards.bradley_terry(torch.ones(1, 3))


def test_accuracy_and_forecast_rewards_prefer_smaller_errors():
    truth, lat, _ = balanced_state(16, 32)
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    samples = torch.stack([truth + k * noise * truth.abs().mean((-2, -1), keepdim=True) * 1e-2 for k in (3, 1, 4, 2)])
    r = rewards.accuracy_reward(samples, truth, LAYOUT, lat)
    assert torch.equal(r.argsort(descending=True), torch.tensor([1, 3, 0, 2]))
    torch.testing.assert_close(rewards.forecast_reward(samples, truth, LAYOUT, lat), r)


# -- batching, the reward set -----------------------------------------------------------------------
def test_leading_dims_match_a_loop():
    truth, lat, lon = balanced_state(16, 32)
    gen = torch.Generator().manual_seed(4)
    scale = truth.abs().mean((-2, -1), keepdim=True)
    truths = truth + 0.1 * scale * torch.randn((2, 3, *truth.shape), generator=gen, dtype=torch.float64)
    spread = 0.05 * scale * torch.randn((2, 3, 4, *truth.shape), generator=gen, dtype=torch.float64)
    samples = truths.unsqueeze(2) + spread
    forecasts = samples.flip(2)
    batched = rewards.score_samples(samples, truths, LAYOUT, lat, lon, forecasts, truths)
    assert set(batched) == {"accuracy", "forecast", "geo", "hydro"}
    for i in range(2):
        for j in range(3):
            one = rewards.score_samples(samples[i, j], truths[i, j], LAYOUT, lat, lon, forecasts[i, j], truths[i, j])
            for key, value in one.items():
                assert value.shape == (4,)
                torch.testing.assert_close(batched[key][i, j], value, rtol=1e-12, atol=1e-14)
    d = rewards.geostrophic_imbalance(samples, LAYOUT, lat, lon)
    assert d.shape == (2, 3, 4)
    torch.testing.assert_close(d[1, 2, 3], rewards.geostrophic_imbalance(samples[1, 2, 3], LAYOUT, lat, lon))


def test_score_samples_is_differentiable_and_checks_its_inputs():
    truth, lat, lon = balanced_state(16, 32)
    noise = torch.randn((3, *truth.shape), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    samples = (truth + noise).requires_grad_(True)
    out = rewards.score_samples(samples, truth, LAYOUT, lat, lon, hydrostatic=False)
    assert set(out) == {"accuracy", "geo"}
    sum(v.sum() for v in out.values()).backward()
    assert torch.isfinite(samples.grad).all() and samples.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="both or neither"):
        rewards.score_samples(samples, truth, LAYOUT, lat, lon, forecasts=samples)
    with pytest.raises(SchemaError, match="latitudes"):
        rewards.score_samples(samples, truth, LAYOUT, lat[:-1], lon)
    with pytest.raises(SchemaError, match="channel="):
        rewards.accuracy_reward(samples[:, :-1], truth[:-1], LAYOUT, lat)
