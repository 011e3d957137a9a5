"""Real-data readers: a tiny WeatherBench2-style Zarr made here, and the real ERA5 GRIB sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from align_da_ops import grid
from align_da_ops.data import readers
from align_da_ops.errors import InputDataError, SchemaError


def _wb2_store(path, descending_lat=True, negative_lon=True, zarr_format=2, with_poles=False):
    """WB2 layout quirks: lat north->south, lon -180..180, float levels, extra variables; optionally the
    with-pole grid (9 latitudes from -90 to 90 for an 8 x 16 state grid)."""
    nlat, nlon = (9, 16) if with_poles else (8, 16)
    lat = grid.equiangular_latitudes(nlat, with_poles=with_poles)
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
    ds = readers.open_grib([era5_grib])
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
        readers.open_grib([tmp_path / "missing.grib"])
    bad = tmp_path / "garbage.grib"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputDataError, match="garbage.grib"):
        readers.open_grib([bad])


def test_wb2_store_from_a_url(tmp_path):
    _wb2_store(tmp_path / "wb2.zarr")
    local = readers.open_wb2_zarr(tmp_path / "wb2.zarr")
    remote = readers.open_wb2_zarr(f"file://{tmp_path / 'wb2.zarr'}")  # any fsspec URL (gs:// needs gcsfs)
    xr.testing.assert_identical(local.load(), remote.load())
    with pytest.raises(InputDataError, match="cannot open Zarr store"):
        readers.open_wb2_zarr(f"file://{tmp_path / 'absent.zarr'}")


def test_with_pole_grid_becomes_cell_centres_exactly_for_fields_linear_in_latitude(tmp_path):
    raw = _wb2_store(tmp_path / "poles.zarr", with_poles=True)
    ds = readers.open_wb2_zarr(tmp_path / "poles.zarr").load()
    assert ds.sizes["latitude"] == 9 and ds.latitude.values[0] == -90.0
    linear = ds.assign(temperature=250.0 + 0.5 * ds.latitude * xr.ones_like(ds.temperature))
    centred = readers.poles_to_centres(linear, 8)
    np.testing.assert_allclose(centred.latitude.values, grid.equiangular_latitudes(8))
    np.testing.assert_allclose(centred.temperature.values, (250.0 + 0.5 * centred.latitude * xr.ones_like(centred.temperature)).values,
                               rtol=1e-6)
    # any field: each centre is the mean of its two neighbouring with-pole rows
    want = 0.5 * (ds["2m_temperature"].isel(latitude=3).values + ds["2m_temperature"].isel(latitude=4).values)
    np.testing.assert_allclose(readers.poles_to_centres(ds, 8)["2m_temperature"].isel(latitude=3).values, want, rtol=1e-6)
    assert "mean of the two neighbouring rows" in readers.poles_to_centres(ds, 8).attrs["regridding"]
    assert readers.poles_to_centres(ds, 16) is ds  # not a with-pole grid of that size: unchanged
    assert raw.sizes["latitude"] == 9


def _write_grib(path, edition, fields, date=20200101):
    """A small global GRIB1/GRIB2 file made with ecCodes: 5 x 8 regular lat-lon with poles, one message per
    (paramId, typeOfLevel, level, values north->south)."""
    import eccodes as ec

    sample = {1: "regular_ll_pl_grib1", 2: "regular_ll_pl_grib2"}[edition]
    with open(path, "wb") as f:
        for param, type_of_level, level, values in fields:
            h = ec.codes_grib_new_from_samples(sample)
            for key, value in (("Ni", 8), ("Nj", 5), ("latitudeOfFirstGridPointInDegrees", 90.0),
                               ("latitudeOfLastGridPointInDegrees", -90.0), ("longitudeOfFirstGridPointInDegrees", 0.0),
                               ("longitudeOfLastGridPointInDegrees", 315.0), ("iDirectionIncrementInDegrees", 45.0),
                               ("jDirectionIncrementInDegrees", 45.0), ("dataDate", date), ("dataTime", 0),
                               ("paramId", param), ("typeOfLevel", type_of_level), ("level", level)):
                ec.codes_set(h, key, value)
            ec.codes_set_values(h, np.asarray(values, dtype=float).ravel())
            ec.codes_write(h, f)
            ec.codes_release(h)


def _gfs_like(path, edition):
    """What NCEP GFS files hold that trips a plain cfgrib open: gh in gpm, and t on pressure levels, at the
    surface and at 2 m (paramIds: gh 156, t 130, 2t 167, sp 134)."""
    rng = np.random.default_rng(edition)
    f = {name: base + rng.normal(size=(5, 8)) for name, base in
         (("gh500", 5500.0), ("gh850", 1400.0), ("t500", 250.0), ("t850", 270.0), ("t2", 280.0), ("sp", 1e5), ("ts", 285.0))}
    _write_grib(path, edition, [(156, "isobaricInhPa", 500, f["gh500"]), (156, "isobaricInhPa", 850, f["gh850"]),
                                (130, "isobaricInhPa", 500, f["t500"]), (130, "isobaricInhPa", 850, f["t850"]),
                                (167, "heightAboveGround", 2, f["t2"]), (134, "surface", 0, f["sp"]),
                                (130, "surface", 0, f["ts"])])
    return f


@pytest.mark.parametrize("edition", [1, 2])
def test_gfs_like_grib_needs_no_filter_and_maps_gh_to_geopotential(tmp_path, edition):
    path = tmp_path / f"gfs.grib{edition}"
    fields = _gfs_like(path, edition)
    with pytest.raises(Exception, match="multiple values for unique key"):  # the failure users met with plain cfgrib
        xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    ds = readers.open_grib([path])
    assert set(ds.data_vars) == {"geopotential", "temperature", "2m_temperature", "surface_pressure"}
    assert list(ds.level.values) == [500, 850] and ds.latitude.values[0] == -90.0
    north_up = ds.isel(latitude=slice(None, None, -1))  # the file runs north to south
    tolerance = {1: 0.05, 2: 0.01}[edition]  # GRIB packing precision (GRIB1 packs more coarsely here)
    np.testing.assert_allclose(north_up["geopotential"].sel(level=500).values, fields["gh500"] * readers.G0,
                               atol=tolerance * readers.G0)
    np.testing.assert_allclose(north_up["temperature"].sel(level=850).values, fields["t850"], atol=tolerance)
    np.testing.assert_allclose(north_up["2m_temperature"].values, fields["t2"], atol=tolerance)  # not the surface t
    assert ds["geopotential"].attrs["units"] == "m**2 s**-2"
    only_levels = readers.open_grib([path], {"typeOfLevel": "isobaricInhPa"})
    assert set(only_levels.data_vars) == {"geopotential", "temperature"}
    with pytest.raises(InputDataError, match=r"do any messages match it\?"):
        readers.open_grib([path], {"typeOfLevel": "hybrid"})


def test_inspect_reads_a_grib_file_with_a_filter(tmp_path):
    from typer.testing import CliRunner

    from align_da_ops.cli import app

    path = tmp_path / "gfs.grb2"
    _gfs_like(path, 2)
    res = CliRunner().invoke(app, ["inspect", str(path), "--filter", "typeOfLevel=isobaricInhPa"])
    assert res.exit_code == 0, res.output
    assert "geopotential" in res.output and "surface_pressure" not in res.output
    res = CliRunner().invoke(app, ["inspect", str(path), "--filter", "typeOfLevel"])
    assert res.exit_code != 0 and "KEY=VALUE" in res.output


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
    # the same config on WB2's with-pole grid (9 latitudes) reads onto the 8 cell-centred latitudes
    _wb2_store(tmp_path / "poles.zarr", with_poles=True)
    poles = tmp_path / "poles.yaml"
    poles.write_text(yaml.safe_dump({**raw, "data": {"kind": "wb2_zarr", "path": str(tmp_path / "poles.zarr")}}))
    centred = sources.open_states(load_config(poles))
    np.testing.assert_allclose(centred.latitude.values, grid.equiangular_latitudes(8))
