"""ObsBatch invariants and the IODA NetCDF round trip (property test)."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from obs_factories import make_batch

from align_da_ops.errors import ObservationError
from align_da_ops.grid import VARIABLES
from align_da_ops.obs.batch import ObsBatch, QCFlag
from align_da_ops.obs.ioda import read_ioda, read_ioda_checked, read_ioda_groups, write_ioda

_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def batches(draw):
    n = draw(st.integers(0, 12))
    rows = lambda s: draw(st.lists(s, min_size=n, max_size=n))
    variable = rows(st.sampled_from(sorted(VARIABLES)))
    surface = [not VARIABLES[v].upper_air for v in variable]
    pressure = [np.nan if s else p for s, p in zip(surface, rows(st.floats(1.0, 1.1e5)))]
    text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
    return ObsBatch.from_columns(
        latitude=rows(st.floats(-90, 90)),
        longitude=rows(st.floats(-720, 720)),
        pressure=pressure,
        elevation=rows(st.one_of(st.just(np.nan), st.floats(-500, 9000))),
        time=np.asarray(rows(st.integers(-(2**40), 2**40)), dtype="datetime64[s]"),
        variable=variable,
        value=rows(st.one_of(st.just(np.nan), _floats)),
        error=rows(st.floats(1e-6, 1e6)),
        qc=rows(st.sampled_from([int(f) for f in QCFlag])),
        obs_type=rows(text),
        station=rows(text),
        report=rows(st.integers(0, 2**62)),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_ioda_round_trip_is_exact(batch, tmp_path):
    path = write_ioda(batch, tmp_path / "obs.nc")
    back = read_ioda(path)
    assert back.equals(batch)
    assert back.qc.dtype == np.int16 and back.report.dtype == np.int64


def _sonde_and_station() -> ObsBatch:
    """A 2-level radiosonde (z, t, u, v at 500 and 850 hPa; one temperature missing) and a surface station."""
    sonde = ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"]
    return ObsBatch.from_columns(
        latitude=[50.0] * 8 + [10.0] * 2, longitude=[7.0] * 8 + [200.0] * 2,
        pressure=[50000.0] * 4 + [85000.0] * 4 + [np.nan] * 2,
        time=np.full(10, np.datetime64("2000-01-01T00:00:00", "s")),
        variable=sonde * 2 + ["surface_pressure", "2m_temperature"],
        value=[55000.0, 250.0, 10.0, -3.0, 14000.0, np.nan, 5.0, 1.0, 1.0e5, 290.0],
        error=[30.0, 1.0, 2.0, 2.0, 30.0, 1.0, 2.0, 2.0, 100.0, 1.0],
        obs_type=["temp"] * 8 + ["synop"] * 2, station=["10410"] * 8 + ["91285"] * 2, report=[7] * 8 + [8] * 2,
    )


def test_ioda_v3_layout_read_group_by_group_as_ioda_does(tmp_path):
    batch = _sonde_and_station()
    hofx_b, hofx_a = batch.value + 1.0, batch.value + 0.5
    effective = batch.flag(np.arange(10) == 0, QCFlag.BACKGROUND_CHECK)
    path = write_ioda(effective, tmp_path / "obs.nc", pre_qc=batch.qc, hofx_background=hofx_b, hofx_analysis=hofx_a)
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_maskandscale(False)
        assert list(nc.dimensions) == ["Location"] and len(nc.dimensions["Location"]) == 3  # 2 sonde levels + 1 station
        assert set(nc.groups) >= {"MetaData", "ObsValue", "ObsError", "PreQC", "EffectiveQC", "EffectiveError",
                                  "hofx0", "hofx1", "ombg", "oman"}
        for group in nc.groups.values():  # IODA: every variable of every group lives on Location
            for var in group.variables.values():
                assert var.dimensions == ("Location",), (group.name, var.name)
        meta = nc["MetaData"]
        assert meta["dateTime"].dtype == np.int64 and meta["dateTime"].units == "seconds since 1970-01-01T00:00:00Z"
        assert meta["dateTime"][:].tolist() == [946684800] * 3
        assert meta["stationIdentification"][:].tolist() == ["10410", "10410", "91285"]
        assert np.isnan(meta["pressure"][2]) and meta["pressure"][:2].tolist() == [50000.0, 85000.0]
        obs = nc["ObsValue"]
        assert set(obs.variables) == {"geopotential", "airTemperature", "windEastward", "windNorthward",
                                      "stationPressure", "airTemperatureAt2M"}
        assert obs["airTemperature"].units == "K" and obs["geopotential"].units == "m2 s-2"
        assert obs["stationPressure"][2] == 1.0e5 and np.isnan(obs["stationPressure"][0])  # not observed there
        pre, eff = nc["PreQC/airTemperature"], nc["EffectiveQC/geopotential"]
        assert pre.dtype == np.int32 and pre[:].tolist() == [QCFlag.PASS, QCFlag.MISSING, -2147483647]
        assert "background_check" in pre.flag_meanings.split() and list(pre.flag_values) == [int(f) for f in QCFlag]
        assert eff[:].tolist()[0] == QCFlag.BACKGROUND_CHECK and nc["PreQC/geopotential"][0] == QCFlag.PASS
        np.testing.assert_array_equal(nc["ombg/windEastward"][:2], [-1.0, -1.0])
        np.testing.assert_array_equal(nc["oman/windEastward"][:2], [-0.5, -0.5])
        np.testing.assert_array_equal(nc["hofx0/windEastward"][:2], [11.0, 6.0])
    back, problems, extra = read_ioda_groups(path, ("hofx0", "hofx1", "PreQC"))
    assert problems == () and back.equals(effective)  # the batch of an archive file carries the EffectiveQC
    np.testing.assert_array_equal(extra["hofx0"], hofx_b)
    np.testing.assert_array_equal(extra["hofx1"], hofx_a)
    np.testing.assert_array_equal(extra["PreQC"], batch.qc)
    assert not (tmp_path / ".obs.nc.tmp").exists()


def test_ioda_units_other_than_iodas_are_refused(tmp_path):
    path = write_ioda(_sonde_and_station(), tmp_path / "obs.nc")
    with netCDF4.Dataset(path, "a") as nc:
        nc["ObsValue/airTemperature"].units = "degC"
    batch, problems = read_ioda_checked(path)
    assert len(batch) == 8 and "units differ from IODA's" in problems[0]


def test_read_rejects_a_foreign_file(tmp_path):
    bad = tmp_path / "x.nc"
    bad.write_bytes(b"not netcdf")
    with pytest.raises(ObservationError, match="not a readable NetCDF"):
        read_ioda(bad)
    with netCDF4.Dataset(tmp_path / "y.nc", "w") as nc:
        nc.createDimension("Location", 1)
    with pytest.raises(ObservationError, match="lacks the MetaData group"):
        read_ioda(tmp_path / "y.nc")


def test_batch_normalises_and_validates():
    b = make_batch([-90.00000000000001, 45.0], [-10.0, 720.0], "surface_pressure")
    np.testing.assert_array_equal(b.latitude, [-90.0, 45.0])
    np.testing.assert_array_equal(b.longitude, [350.0, 0.0])
    with pytest.raises(ObservationError, match="unknown variables"):
        make_batch([0.0], [0.0], "humidity")
    with pytest.raises(ObservationError, match="latitudes"):
        make_batch([91.0], [0.0], "surface_pressure")
    with pytest.raises(ObservationError, match="pressures must be positive"):
        make_batch([0.0], [0.0], "temperature", pressure=[-5.0])


def test_flag_keeps_the_first_failure_and_never_drops_rows():
    b = make_batch([0.0, 1.0, 2.0], [0.0, 0.0, 0.0], "surface_pressure", value=[1.0, np.nan, 3.0])
    b2 = b.flag(np.array([True, True, False]), QCFlag.GROSS)
    assert len(b2) == 3
    assert b2.qc.tolist() == [QCFlag.GROSS, QCFlag.MISSING, QCFlag.PASS]
    assert b2.flag_counts()["gross"] == 1 and b2.flag_counts()["missing"] == 1
    with pytest.raises(ValueError):
        b.qc[0] = 5  # columns are read-only


def test_concat_keeps_reports_distinct():
    a = make_batch([0.0, 1.0], [0.0, 0.0], "surface_pressure", report=np.array([0, 0]))
    c = ObsBatch.concat([a, ObsBatch.empty(), a])
    assert len(c) == 4 and c.report.tolist() == [0, 0, 1, 1]
