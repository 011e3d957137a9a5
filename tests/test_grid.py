"""Schema: channel stacking round trips, boundary errors name expected vs actual, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from align_da_ops import grid
from align_da_ops.errors import SchemaError

LAYOUT = grid.StateLayout(("geopotential", "temperature"), ("surface_pressure",), (500, 850))


def _dataset(layout, lead_sizes, nlat=4, nlon=8, seed=0):
    lead = tuple(f"d{i}" for i in range(len(lead_sizes)))
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.normal(size=(*lead_sizes, layout.n_channels, nlat, nlon)), dtype=torch.float32)
    lat, lon = grid.equiangular_latitudes(nlat), grid.longitudes(nlon)
    return layout.from_tensor(x, lat, lon, leading=lead), x, lead


@given(lead=st.lists(st.integers(1, 3), max_size=2), n_levels=st.integers(1, 4), surface=st.booleans())
@settings(max_examples=25, deadline=None)
def test_tensor_dataset_round_trip(lead, n_levels, surface):
    layout = grid.StateLayout(
        ("temperature", "u_component_of_wind"), ("surface_pressure",) if surface else (), tuple(grid.ERA5_LEVELS[:n_levels])
    )
    ds, x, names = _dataset(layout, tuple(lead))
    back, back_lead = layout.to_tensor(ds)
    assert back_lead == names
    torch.testing.assert_close(back, x)
    assert layout.channels[0] == f"temperature_{layout.levels[0]}"


def test_channel_order_and_index():
    assert LAYOUT.channels == ("geopotential_500", "geopotential_850", "temperature_500", "temperature_850", "surface_pressure")
    assert LAYOUT.channel_index("temperature", 850) == 3
    with pytest.raises(SchemaError, match="temperature_700"):
        LAYOUT.channel_index("temperature", 700)


def test_to_tensor_errors_name_expected_and_actual():
    ds, _, _ = _dataset(LAYOUT, (2,))
    with pytest.raises(SchemaError, match=r"lacks variables \['surface_pressure'\]"):
        LAYOUT.to_tensor(ds.drop_vars("surface_pressure"))
    with pytest.raises(SchemaError, match=r"expected dims \(\.\.\., level, latitude, longitude\); got"):
        LAYOUT.to_tensor(ds.transpose("d0", "latitude", "level", "longitude"))
    with pytest.raises(SchemaError, match=r"lacks levels \[700\]"):
        grid.StateLayout(("temperature",), (), (500, 700)).to_tensor(ds)
    with pytest.raises(SchemaError, match="leading dims"):
        LAYOUT.to_tensor(ds.assign(surface_pressure=ds["surface_pressure"].isel(d0=0)))


def test_from_tensor_shape_errors():
    with pytest.raises(SchemaError, match=r"\(channel, lat, lon\) shape \(4, 4, 8\) != expected \(5, 4, 8\)"):
        LAYOUT.from_tensor(torch.zeros(4, 4, 8), grid.equiangular_latitudes(4), grid.longitudes(8))
    with pytest.raises(SchemaError, match="expected 4"):
        LAYOUT.from_tensor(torch.zeros(5, 4, 8), grid.equiangular_latitudes(4), grid.longitudes(8), leading=("time",))


def test_unknown_variables_rejected():
    with pytest.raises(SchemaError, match="not an upper-air variable"):
        grid.StateLayout(("2m_temperature",), (), (500,))
    with pytest.raises(SchemaError, match="not a surface variable"):
        grid.StateLayout((), ("temperature",), ())


def test_canonicalise_flips_latitude_and_wraps_longitude():
    lat = grid.equiangular_latitudes(4)[::-1]
    lon = np.array([-90.0, 0.0, 90.0, 180.0])
    values = np.arange(16.0).reshape(4, 4)
    ds = xr.Dataset({"surface_pressure": (("latitude", "longitude"), values)}, coords={"latitude": lat, "longitude": lon})
    out = grid.canonicalise(ds)
    assert np.all(np.diff(out.latitude.values) > 0)
    np.testing.assert_array_equal(out.longitude.values, [0.0, 90.0, 180.0, 270.0])
    # the value at (lat=lat[0] (north), lon=-90) moved to (last row, lon=270)
    assert out["surface_pressure"].values[-1, -1] == values[0, 0]


def test_gaussian_latitudes_match_the_core():
    from align_da_ops.data.dycore import CoreSpec, HeldSuarezCore

    core = HeldSuarezCore(CoreSpec(21, 4), dt_minutes=60)
    np.testing.assert_allclose(core.latitudes, grid.gaussian_latitudes(32), atol=1e-6)
    np.testing.assert_allclose(core.longitudes, grid.longitudes(64), atol=1e-9)


def test_latitude_weights_mean_one():
    w = grid.latitude_weights(grid.gaussian_latitudes(32))
    assert abs(w.mean() - 1.0) < 1e-12 and w.min() > 0


def test_normalization_round_trip_and_statistics():
    x = torch.randn(6, 5, 4, 8) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[:, None, None] + 10.0
    stats = grid.Normalization.from_tensor(x, LAYOUT.channels, ("2000-01-01", "2000-01-02"))
    z = stats.normalize(x)
    flat = z.movedim(-3, 0).reshape(5, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, correction=0), torch.ones(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.denormalize(z), x, atol=1e-4, rtol=1e-6)
    again = grid.Normalization.from_dataset(stats.to_dataset())
    assert again.channels == stats.channels and again.period == stats.period
    np.testing.assert_array_equal(again.std, stats.std)
    with pytest.raises(SchemaError, match="3 channels"):
        stats.normalize(torch.zeros(3, 2, 2))


def test_constant_channel_gets_unit_std():
    stats = grid.Normalization.from_tensor(torch.ones(3, 1, 2, 2), ("surface_pressure",), ("a", "b"))
    assert stats.std[0] == 1.0
