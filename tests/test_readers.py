"""Real-data readers: a tiny WeatherBench2-style Zarr made here, and the real ERA5 GRIB sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from align_da_ops import grid
from align_da_ops.data import readers
from align_da_ops.errors import InputDataError, SchemaError


def _wb2_store(path, descending_lat=True, negative_lon=True, zarr_format=2):
    """WB2 layout quirks: lat north->south, lon -180..180, float levels, extra variables."""
    nlat, nlon = 8, 16
    lat = grid.equiangular_latitudes(nlat)
    lon = grid.longitudes(nlon)
    if descending_lat:
        lat = lat[::-1]
    if negative_lon:
        lon = np.where(lon >= 180, lon - 360, lon)
    times = pd.date_range("2019-01-01", periods=5, freq="6h")
    rng = np.random.default_rng(0)
    shape = (len(times), 3, nlat, nlon)
    ds = xr.Dataset(
        {
            "temperature": (("time", "level", "latitude", "longitude"), 250 + 10 * rng.normal(size=shape).astype(np.float32)),
            "geopotential": (("time", "level", "latitude", "longitude"), 5e4 + 1e3 * rng.normal(size=shape).astype(np.float32)),
            "2m_temperature": (("time", "latitude", "longitude"), 280 + rng.normal(size=shape[:1] + shape[2:]).astype(np.float32)),
            "land_sea_mask": (("latitude", "longitude"), np.zeros((nlat, nlon), np.float32)),
        },
        coords={"time": times, "level": np.array([1000.0, 500.0, 850.0]), "latitude": lat, "longitude": lon},
    )
    ds.to_zarr(path, zarr_format=zarr_format, consolidated=zarr_format == 2)
    return ds


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_wb2_zarr_round_trip_into_schema(tmp_path, zarr_format):
    raw = _wb2_store(tmp_path / "wb2.zarr", zarr_format=zarr_format)
    ds = readers.open_wb2_zarr(tmp_path / "wb2.zarr")
    assert set(ds.data_vars) == {"temperature", "geopotential", "2m_temperature"}  # non-schema variables dropped
    assert ds["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert list(ds.level.values) == [500, 850, 1000]
    assert np.all(np.diff(ds.latitude.values) > 0) and ds.longitude.values.min() >= 0
    # same physical point, same value: raw (lat=north-most, lon=-22.5) -> canonical (last row, lon=337.5)
    want = raw["temperature"].sel(level=850.0, latitude=raw.latitude[0], longitude=-22.5).values
    got = ds["temperature"].sel(level=850, latitude=raw.latitude.values[0], longitude=337.5).values
    np.testing.assert_array_equal(got, want)
    # into a tensor and back
    layout = grid.StateLayout(("temperature", "geopotential"), ("2m_temperature",), (500, 850))
    sub = readers.select(ds, layout.upper_air + layout.surface, layout.levels, pd.Timestamp("2019-01-01T06"), pd.Timestamp("2019-01-01T18"))
    x, lead = layout.to_tensor(sub)
    assert lead == ("time",) and x.shape == (3, 5, 8, 16)
    back = layout.from_tensor(x, sub.latitude.values, sub.longitude.values, leading=lead, coords={"time": sub.time.values})
    np.testing.assert_array_equal(back["temperature"].values, sub["temperature"].values)
    np.testing.assert_array_equal(back["2m_temperature"].values, sub["2m_temperature"].values)


def test_wb2_errors(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        readers.open_wb2_zarr(tmp_path / "nope.zarr")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(InputDataError, match="cannot open Zarr store"):
        readers.open_wb2_zarr(tmp_path / "broken.zarr")
    _wb2_store(tmp_path / "wb2.zarr")
    ds = readers.open_wb2_zarr(tmp_path / "wb2.zarr")
    with pytest.raises(SchemaError, match=r"lacks variables \['u_component_of_wind'\]"):
        readers.select(ds, ["u_component_of_wind"], [500])
    with pytest.raises(SchemaError, match=r"lacks pressure levels \[300\]"):
        readers.select(ds, ["temperature"], [300, 500])
    with pytest.raises(SchemaError, match="no times"):
        readers.select(ds, ["temperature"], [500], pd.Timestamp("2030-01-01"), pd.Timestamp("2030-01-02"))
    with pytest.raises(SchemaError, match=r"\(8, 16\); config expects \(32, 64\)"):
        readers.check_grid(ds, 32, 64)


def test_era5_grib_sample(era5_grib):
    ds = readers.open_era5_grib([era5_grib])
    assert set(ds.data_vars) == {"geopotential", "temperature"}
    assert ds["geopotential"].dims == ("member", "time", "level", "latitude", "longitude")
    assert ds.sizes == {"member": 10, "time": 4, "level": 2, "latitude": 61, "longitude": 120}
    assert list(ds.level.values) == [500, 850]
    assert ds.latitude.values[0] == -90.0 and ds.latitude.values[-1] == 90.0
    assert str(ds.time.values[0])[:13] == "2017-01-01T00" and str(ds.time.values[-1])[:13] == "2017-01-02T12"
    z500 = ds["geopotential"].sel(level=500).values / 9.80665
    assert 4500 < z500.min() and z500.max() < 6000  # metres
    t850 = ds["temperature"].sel(level=850).values
    assert 220 < t850.min() and t850.max() < 310
    readers.check_plausible(ds)
    # the tropics are warmer than the poles at 850 hPa
    zonal = ds["temperature"].sel(level=850).mean(["member", "time", "longitude"])
    assert float(zonal.sel(latitude=0)) > float(zonal.sel(latitude=-90)) + 20
    # members differ (an ensemble), but only slightly
    spread = ds["temperature"].std("member").mean()
    assert 0.0 < float(spread) < 2.0


def test_grib_errors(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        readers.open_era5_grib([tmp_path / "missing.grib"])
    bad = tmp_path / "garbage.grib"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputDataError, match="garbage.grib"):
        readers.open_era5_grib([bad])


def test_check_plausible_catches_nan_and_range():
    ds = xr.Dataset({"temperature": (("level", "latitude", "longitude"), np.full((1, 2, 2), 250.0))})
    readers.check_plausible(ds)
    with pytest.raises(SchemaError, match="non-finite"):
        readers.check_plausible(ds.where(ds > 300))
    with pytest.raises(SchemaError, match="outside plausible range"):
        readers.check_plausible(ds + 200)


def test_open_states_and_stats_for_a_wb2_config(tmp_path, monkeypatch):
    """A WB2-sourced config: open_states selects and checks; `align-da stats` writes readable statistics."""
    import yaml
    from typer.testing import CliRunner

    from align_da_ops.cli import app
    from align_da_ops.config import load_config
    from align_da_ops.data import sources

    _wb2_store(tmp_path / "wb2.zarr")
    raw = {
        "name": "wb2-test",
        "state": {"upper_air": ["temperature"], "surface": ["2m_temperature"], "levels": [500, 850],
                  "grid": {"kind": "equiangular", "nlat": 8, "nlon": 16}},
        "data": {"kind": "wb2_zarr", "path": str(tmp_path / "wb2.zarr")},
        "splits": {"train": {"start": "2019-01-01T00:00:00", "end": "2019-01-01T12:00:00"},
                   "validation": {"start": "2019-01-01T18:00:00", "end": "2019-01-01T18:00:00"},
                   "test": {"start": "2019-01-02T00:00:00", "end": "2019-01-02T00:00:00"}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    ds = sources.open_states(cfg)
    assert list(ds.data_vars) == ["temperature", "2m_temperature"] and list(ds.level.values) == [500, 850]
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["stats", str(path)])
    assert res.exit_code == 0, res.output
    stats = sources.read_normalization(tmp_path / "data" / "wb2-test" / "normalization.zarr")
    train = ds.sel(time=slice("2019-01-01T00", "2019-01-01T12"))
    np.testing.assert_allclose(stats.mean[1], float(train["temperature"].sel(level=850).mean()), rtol=1e-6)
    np.testing.assert_allclose(stats.std[2], float(train["2m_temperature"].std()), rtol=1e-5)
    assert stats.channels == ("temperature_500", "temperature_850", "2m_temperature")
