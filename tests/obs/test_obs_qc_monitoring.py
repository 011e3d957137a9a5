"""QC: one test per flag (with injected gross errors caught by the background check); O−B/O−A tables."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
import torch
from obs_factories import make_batch

from align_da_ops.errors import ObservationError
from align_da_ops.obs import qc
from align_da_ops.obs.batch import QCFlag
from align_da_ops.obs.config import QCConfig
from align_da_ops.obs.monitoring import STAT_COLUMNS, departure_statistics, level_bands
from align_da_ops.obs.operators import GridInterpolator

T0 = np.datetime64("2000-01-01T06:00:00", "s")


def _flags(batch):
    return [QCFlag(int(q)).name for q in batch.qc]


def test_missing():
    b = make_batch(
        [0, 0, 0], [0, 0, 0], "surface_pressure", value=[1e5, np.nan, 1e5], error=np.array([100.0, 100.0, 0.0])
    )
    assert _flags(qc.check_missing(b)) == ["PASS", "MISSING", "MISSING"]


def test_blacklist_by_station_and_type():
    b = make_batch(
        [0, 0, 0],
        [0, 0, 0],
        "surface_pressure",
        value=1e5,
        station=np.array(["a", "b", "c"]),
        obs_type=np.array(["synop", "synop", "marine"]),
    )
    assert _flags(qc.check_blacklist(b, stations=["b"], obs_types=["marine"])) == ["PASS", "BLACKLISTED", "BLACKLISTED"]


def test_time_window_is_half_open():
    times = T0 + np.array([-3 * 3600, -3 * 3600 + 1, 0, 3 * 3600, 3 * 3600 + 1]).astype("timedelta64[s]")
    b = make_batch([0] * 5, [0] * 5, "surface_pressure", value=1e5, time=times)
    start, end = qc.window_of(T0, timedelta(hours=3))
    assert _flags(qc.check_window(b, start, end)) == ["OUTSIDE_WINDOW", "PASS", "PASS", "PASS", "OUTSIDE_WINDOW"]


def test_gross_limits_from_the_schema_and_overrides():
    b = make_batch(
        [0, 0, 0],
        [0, 0, 0],
        np.array(["temperature", "temperature", "surface_pressure"]),
        pressure=[5e4, 5e4, np.nan],
        value=[400.0, 250.0, 2e5],
    )
    assert _flags(qc.check_gross(b)) == ["GROSS", "PASS", "GROSS"]
    assert _flags(qc.check_gross(b, {"temperature": (260.0, 300.0)})) == ["GROSS", "GROSS", "GROSS"]


def test_no_operator_and_outside_domain(layout, small_grid):
    op = GridInterpolator(layout, *small_grid)
    names = np.array(["2m_temperature", "temperature", "temperature", "temperature"])
    b = make_batch([0] * 4, [0] * 4, names, pressure=[np.nan, 1000.0, 50000.0, 20000.0 * np.exp(-0.04)], value=250.0)
    assert _flags(qc.check_operator(b, op, tolerance_log_p=0.05)) == ["NO_OPERATOR", "OUTSIDE_DOMAIN", "PASS", "PASS"]


def test_duplicates_keep_the_first():
    b = make_batch(
        [1, 1, 1], [2, 2, 2], "surface_pressure", value=[1e5, 1e5 + 1, 1e5], station=np.array(["x", "x", "y"])
    )
    assert _flags(qc.check_duplicates(b)) == ["PASS", "DUPLICATE", "PASS"]


def test_thinning_keeps_one_per_box_and_level_closest_in_time():
    n = 6
    times = T0 + np.array([5400, 60, 3000, 100, 100, 100]).astype("timedelta64[s]")
    lat = np.array([10.0, 10.1, 10.2, 10.05, 10.0, 10.0])
    p = np.array([50000.0, 50000.0, 50500.0, 50000.0, 85000.0, 50000.0])
    types = np.array(["amv"] * 5 + ["temp"])
    b = make_batch(lat, np.full(n, 20.0), "u_component_of_wind", pressure=p, value=1.0, time=times, obs_type=types)
    out = qc.thin(b, box_km=200.0, obs_types=["amv"], centre=T0)
    # rows 0-3 share a box and ln-p bin: row 1 is closest to the centre; row 4 is another level; temp untouched
    assert _flags(out) == ["THINNED", "PASS", "THINNED", "THINNED", "PASS", "PASS"]


def test_thinning_boxes_are_roughly_equal_area():
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, 20000)
    lat, lon = np.degrees(np.arcsin(z)), rng.uniform(0, 360, 20000)
    boxes = qc.thinning_boxes(lat, lon, 1000.0)
    counts = np.bincount(np.unique(boxes, return_inverse=True)[1])
    expected = 4 * np.pi * 6371.0**2 / 1000.0**2  # ~510 boxes of 1000 km x 1000 km
    assert 0.8 * expected < len(counts) < 1.2 * expected


def test_background_check_catches_injected_gross_errors(layout, small_grid):
    lat, lon = small_grid
    op = GridInterpolator(layout, lat, lon)
    gen = torch.Generator().manual_seed(0)
    truth = 250.0 + 10.0 * torch.randn(op.state_shape, generator=gen, dtype=torch.float64)
    members = truth + 0.5 * torch.randn((8, *op.state_shape), generator=gen, dtype=torch.float64)
    rng = np.random.default_rng(0)
    n = 400
    obs = make_batch(
        rng.uniform(-80, 80, n), rng.uniform(0, 360, n), "temperature", pressure=rng.uniform(25000, 95000, n), value=0.0
    )
    y = op(truth, obs).numpy() + rng.normal(0.0, 1.0, n)
    gross = rng.random(n) < 0.05
    y[gross] += rng.choice([-1, 1], gross.sum()) * rng.uniform(8, 15, gross.sum())
    obs = obs.replace(value=y)
    hx = op(members, obs)
    checked = qc.background_check(obs, hx, k=5.0)  # sigma_b from the ensemble spread
    caught = checked.qc == QCFlag.BACKGROUND_CHECK
    np.testing.assert_array_equal(caught, gross)
    single = qc.background_check(obs, hx.mean(0), k=5.0, sigma_b={"temperature": 0.5})
    np.testing.assert_array_equal(single.qc == QCFlag.BACKGROUND_CHECK, gross)
    loose = qc.background_check(obs, hx.mean(0), k=5.0, sigma_b=100.0)
    assert not (loose.qc == QCFlag.BACKGROUND_CHECK).any()


def test_run_qc_sets_every_flag_and_the_first_failure_wins(layout, small_grid):
    op = GridInterpolator(layout, *small_grid)
    rows = [  # (variable, pressure, value, station, type, seconds from T0, expected)
        ("temperature", 5e4, 250.0, "ok", "temp", 0, "PASS"),
        ("temperature", 5e4, np.nan, "m", "temp", 0, "MISSING"),
        ("temperature", 5e4, 999.0, "bad", "temp", 0, "BLACKLISTED"),  # blacklist before gross
        ("temperature", 5e4, 250.0, "w", "temp", 4 * 3600, "OUTSIDE_WINDOW"),
        ("temperature", 5e4, 500.0, "g", "temp", 0, "GROSS"),
        ("2m_temperature", np.nan, 280.0, "s", "synop", 0, "NO_OPERATOR"),
        ("temperature", 500.0, 220.0, "hi", "temp", 0, "OUTSIDE_DOMAIN"),
        ("temperature", 5e4, 250.0, "ok", "temp", 0, "DUPLICATE"),
        ("u_component_of_wind", 3e4, 10.0, "sat", "amv", 60, "PASS"),
        ("u_component_of_wind", 3e4, 10.0, "sat", "amv", 600, "THINNED"),
        ("u_component_of_wind", 7e4, 80.0, "sat", "amv", 0, "BACKGROUND_CHECK"),
    ]
    var, p, val, st, typ, dt, expected = map(np.array, zip(*rows))
    b = make_batch(
        np.full(len(rows), 30.0),
        np.full(len(rows), 40.0),
        var,
        pressure=p.astype(float),
        value=val.astype(float),
        station=st,
        obs_type=typ,
        time=T0 + dt.astype("timedelta64[s]"),
    )
    cfg = QCConfig(blacklist_stations=("bad",), thinning_km=500.0, background_sigma={"u_component_of_wind": 2.0})
    hx = np.where(b.variable == "u_component_of_wind", 10.0, 250.0)
    out = qc.run_qc(b, cfg, cycle=datetime(2000, 1, 1, 6), operator=op, hx_background=hx)
    assert _flags(out) == list(expected)
    assert set(_flags(out)) == {f.name for f in QCFlag}


def test_departure_statistics_closed_form():
    var = np.array(["temperature"] * 4 + ["surface_pressure"] * 2)
    p = np.array([85000.0, 80000.0, 50000.0, 50000.0, np.nan, np.nan])
    y = np.array([1.0, 3.0, 10.0, 0.0, 5.0, 7.0])
    b = make_batch(np.zeros(6), np.zeros(6), var, pressure=p, value=y, error=np.array([1.0, 1.0, 2.0, 2.0, 1.0, 1.0]))
    b = b.flag(np.array([False, False, False, True, False, False]), QCFlag.GROSS)  # excluded from the stats
    hx = np.zeros(6)
    df = departure_statistics(b, torch.as_tensor(hx), "O-A")
    assert list(df.columns) == list(STAT_COLUMNS)
    low = df[(df.variable == "temperature") & (df.level_band == "1100-700hPa")].iloc[0]
    assert (low["count"], low["mean"], low["std"], low["rms"], low["jo_per_n"]) == (2, 2.0, 1.0, np.sqrt(5.0), 5.0)
    mid = df[(df.variable == "temperature") & (df.level_band == "700-300hPa")].iloc[0]
    assert (mid["count"], mid["mean"], mid["jo_per_n"]) == (1, 10.0, 25.0)
    sfc = df[df.level_band == "surface"].iloc[0]
    assert (sfc["count"], sfc["mean"], sfc["std"]) == (2, 6.0, 1.0)
    assert (df.departure == "O-A").all()
    ens = departure_statistics(b, np.stack([hx - 1.0, hx + 1.0]))  # ensemble mean = hx
    assert np.allclose(ens["mean"], df["mean"])
    empty = departure_statistics(b.flag(np.ones(6, bool), QCFlag.THINNED), hx)
    assert list(empty.columns) == list(STAT_COLUMNS) and len(empty) == 0


def test_level_bands():
    got = level_bands(np.array([np.nan, 100000.0, 70000.0, 69999.0, 1000.0, 120000.0]))
    assert got.tolist() == ["surface", "1100-700hPa", "700-300hPa", "700-300hPa", "300-0hPa", "outside"]  # (lo, hi]


def test_background_check_rejects_a_bad_shape():
    b = make_batch([0.0], [0.0], "surface_pressure", value=1e5)
    with pytest.raises(ObservationError, match="expected"):
        qc.background_check(b, np.zeros(3))
