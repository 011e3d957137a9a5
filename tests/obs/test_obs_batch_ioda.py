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
from align_da_ops.obs.ioda import read_ioda, write_ioda

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


def test_ioda_layout_keeps_integers_integers(tmp_path):
    batch = make_batch([1.0, 2.0], [3.0, 4.0], "surface_pressure", value=[1e5, np.nan])
    path = write_ioda(batch, tmp_path / "obs.nc")
    with netCDF4.Dataset(path) as nc:
        assert set(nc.groups) == {"MetaData", "ObsValue", "ObsError", "PreQC"}
        assert list(nc.dimensions) == ["Location"] and len(nc.dimensions["Location"]) == 2
        assert nc["PreQC/value"].dtype == np.int32
        assert nc["MetaData/dateTime"].dtype == np.int64
        assert nc["PreQC/value"][:].tolist() == [QCFlag.PASS, QCFlag.MISSING]
        assert nc["MetaData/variableUnits"][0] == "Pa"
    assert not (tmp_path / ".obs.nc.tmp").exists()


def test_read_rejects_a_foreign_file(tmp_path):
    bad = tmp_path / "x.nc"
    bad.write_bytes(b"not netcdf")
    with pytest.raises(ObservationError, match="not a readable NetCDF"):
        read_ioda(bad)
    with netCDF4.Dataset(tmp_path / "y.nc", "w") as nc:
        nc.createDimension("Location", 1)
    with pytest.raises(ObservationError, match="lacks MetaData/latitude"):
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
