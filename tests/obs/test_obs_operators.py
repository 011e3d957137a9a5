"""Observation operator oracles: linear fields, date line, poles, exact selection, gradients, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from obs_factories import LEVELS, make_batch

from align_da_ops.errors import SchemaError
from align_da_ops.obs.operators import GridInterpolator, ObservationOperator

UPPER = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind")


def _field(layout, lat, lon, fn) -> torch.Tensor:
    """State (channel, lat, lon) float64 with channel value fn(channel, lat2d, lon2d, ln p or None)."""
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    out = []
    for c, name in enumerate(layout.channels):
        level = next((p for p in LEVELS if name.endswith(f"_{p}")), None)
        lnp = None if level is None else np.log(level * 100.0)
        out.append(fn(c, la, lo, lnp))
    return torch.as_tensor(np.stack(out), dtype=torch.float64)


def test_is_an_observation_operator(layout, small_grid):
    assert isinstance(GridInterpolator(layout, *small_grid), ObservationOperator)


def test_exact_on_fields_linear_in_lon_lat_and_log_pressure(layout, small_grid):
    lat, lon = small_grid
    op = GridInterpolator(layout, lat, lon)
    coef = np.random.default_rng(0).normal(size=(layout.n_channels, 3))
    var_of = [
        layout.channel_index(ch.rsplit("_", 1)[0], 200) if ch != "surface_pressure" else c
        for c, ch in enumerate(layout.channels)
    ]

    def fn(c, la, lo, lnp):  # the same horizontal coefficients on every level of a variable
        k = var_of[c]
        return 1.0 + coef[k, 0] * la + coef[k, 1] * lo + (0.0 if lnp is None else 7.0 * lnp)

    state = _field(layout, lat, lon, fn)
    rng = np.random.default_rng(1)
    n = 200
    olat = rng.uniform(lat[0], lat[-1], n)
    olon = rng.uniform(lon[0], lon[-1], n)  # inside the grid (no wrap: lon itself jumps there)
    names = rng.choice(UPPER, n)
    p = np.exp(rng.uniform(np.log(20000.0), np.log(100000.0), n))
    obs = make_batch(olat, olon, names, pressure=p)
    got = op(state, obs).numpy()
    c = np.asarray([layout.channel_index(v, 200) for v in names])
    want = 1.0 + coef[c, 0] * olat + coef[c, 1] * olon + 7.0 * np.log(p)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    surface = make_batch(olat, olon, "surface_pressure")
    cs = layout.channel_index("surface_pressure")
    np.testing.assert_allclose(op(state, surface).numpy(), 1.0 + coef[cs, 0] * olat + coef[cs, 1] * olon, atol=1e-9)


def test_date_line_wraps_between_last_and_first_column(layout, small_grid):
    lat, lon = small_grid
    op = GridInterpolator(layout, lat, lon)
    state = torch.as_tensor(np.random.default_rng(2).normal(size=op.state_shape))
    dlon = lon[1] - lon[0]
    c, j = layout.channel_index("surface_pressure"), 3
    for olon, s in (
        (lon[-1] + 0.25 * dlon, 0.25),
        (-0.5 * dlon, 0.5),
        (360.0 - 1e-3 * dlon, 0.999),
        (360.0, 0.0),
        (-360.0, 0.0),
    ):
        got = op(state, make_batch(lat[j], olon, "surface_pressure")).item()
        want = (1 - s) * state[c, j, -1].item() + s * state[c, j, 0].item() if s else state[c, j, 0].item()
        assert got == pytest.approx(want, abs=1e-9), olon


def test_poles_across_the_pole_treatment(layout, small_grid):
    lat, lon = small_grid
    op = GridInterpolator(layout, lat, lon)
    cs = layout.channel_index("surface_pressure")

    # 1. zonally symmetric field: poleward points take the outermost row's value exactly
    zonal = _field(layout, lat, lon, lambda c, la, lo, lnp: np.cos(np.deg2rad(la)) + c)
    for olat, row in ((89.0, -1), (90.0, -1), (-90.0, 0), (-88.5, 0)):
        obs = make_batch([olat] * 3, [0.0, 123.4, 359.0], "surface_pressure")
        np.testing.assert_allclose(op(zonal, obs).numpy(), zonal[cs, row, 0].item(), atol=1e-12)

    # 2. Cartesian x = cos(lat) cos(lon) is smooth through the pole: 0 at the pole for every lon,
    #    close to the truth poleward of the last row, continuous at the last row.
    cart = _field(layout, lat, lon, lambda c, la, lo, lnp: np.cos(np.deg2rad(la)) * np.cos(np.deg2rad(lo)))
    at_pole = op(cart, make_batch([90.0, 90.0, -90.0], [10.0, 200.0, 77.0], "surface_pressure")).numpy()
    np.testing.assert_allclose(at_pole, 0.0, atol=1e-12)
    olat = np.linspace(lat[-1], 90.0, 7)
    olon = np.full(7, 45.0)  # mid-cell in lon: bilinear lon error is part of the tolerance
    got = op(cart, make_batch(olat, olon, "surface_pressure")).numpy()
    truth = np.cos(np.deg2rad(olat)) * np.cos(np.deg2rad(olon))
    assert np.max(np.abs(got - truth)) < 0.02
    edge = make_batch([lat[-1], lat[-1] + 1e-10], [30.0, 30.0], "surface_pressure")
    a, b = op(cart, edge).numpy()
    assert a == pytest.approx(b, abs=1e-9)


def test_grid_point_observations_equal_indexing_bit_for_bit(layout, small_grid):
    lat, lon = small_grid
    op = GridInterpolator(layout, lat, lon)
    state = torch.randn((3, *op.state_shape), generator=torch.Generator().manual_seed(0)) * 1000  # float32, 3 members
    rng = np.random.default_rng(3)
    j, i = rng.integers(0, len(lat), 40), rng.integers(0, len(lon), 40)
    c = rng.integers(0, layout.n_channels, 40)
    names, press = [], []
    for ch in c:
        name = layout.channels[ch]
        if name == "surface_pressure":
            names.append(name), press.append(np.nan)
        else:
            var, level = name.rsplit("_", 1)
            names.append(var), press.append(float(level) * 100.0)
    obs = make_batch(lat[j], lon[i], np.asarray(names), pressure=np.asarray(press))
    got = op(state, obs)
    assert got.dtype == torch.float32
    assert torch.equal(got, state[:, c, j, i])


def test_batched_over_members_and_no_operator_rows_are_nan(layout, small_grid):
    lat, lon = small_grid
    op = GridInterpolator(layout, lat, lon)
    state = torch.randn((2, 3, *op.state_shape), dtype=torch.float64)
    obs = make_batch(
        [10.0, -20.0, 5.0],
        [5.0, 100.0, 300.0],
        np.asarray(["temperature", "2m_temperature", "temperature"]),
        pressure=[50000.0, np.nan, np.nan],
    )
    h = op(state, obs)
    assert h.shape == (2, 3, 3)
    torch.testing.assert_close(h[1, 2], op(state[1, 2], obs), rtol=0, atol=0, equal_nan=True)
    np.testing.assert_array_equal(op.supported(obs), [True, False, False])  # t2m absent; temperature without pressure
    assert torch.isnan(h[..., 1:]).all() and torch.isfinite(h[..., 0]).all()


def test_gradcheck_tiny_grid(layout):
    lat, lon = np.array([-60.0, -20.0, 20.0, 60.0]), np.arange(8) * 45.0
    op = GridInterpolator(layout, lat, lon)
    obs = make_batch(
        [75.0, 0.0, -30.0, 10.0],
        [350.0, 10.0, 181.0, 90.0],
        np.asarray(["temperature", "u_component_of_wind", "surface_pressure", "geopotential"]),
        pressure=[85000.0, 40000.0, np.nan, 100000.0],
    )
    prepared = op.prepare(obs)
    state = torch.randn((2, *op.state_shape), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(prepared, (state,))


def test_levels_outside_the_state_are_clamped_and_reported(layout, small_grid):
    lat, lon = small_grid
    op = GridInterpolator(layout, lat, lon)
    state = _field(layout, lat, lon, lambda c, la, lo, lnp: 0.0 * la + (0.0 if lnp is None else lnp))
    obs = make_batch([0.0, 0.0], [0.0, 0.0], "temperature", pressure=[1000.0, 105000.0])
    np.testing.assert_allclose(op(state, obs).numpy(), np.log([20000.0, 100000.0]))
    np.testing.assert_array_equal(op.within_levels(obs), [False, False])


def test_wrong_state_shape_is_a_clear_error(layout, small_grid):
    op = GridInterpolator(layout, *small_grid)
    with pytest.raises(SchemaError, match="shape"):
        op(torch.zeros(3, 8, 16), make_batch([0.0], [0.0], "surface_pressure"))


@pytest.mark.gpu
def test_cuda_matches_cpu(layout, small_grid):
    if not torch.cuda.is_available():
        pytest.fail("gpu-marked test run without CUDA")
    op = GridInterpolator(layout, *small_grid)
    state = torch.randn((2, *op.state_shape), dtype=torch.float64)
    obs = make_batch(np.linspace(-89, 89, 50), np.linspace(0, 359, 50), "surface_pressure")
    got = op(state.cuda(), obs)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), op(state, obs))
