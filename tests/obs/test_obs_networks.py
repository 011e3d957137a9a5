"""Synthetic networks: exact truth sampling, reproducibility, station list, swath geometry, errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from align_da_ops.errors import ObservationError
from align_da_ops.grid import gaussian_latitudes, longitudes
from align_da_ops.obs.batch import QCFlag
from align_da_ops.obs.config import ObservationsConfig, RandomMaskNetwork, StationNetwork, SwathNetwork
from align_da_ops.obs.networks import Truth, draw_network, simulate, swath_footprints
from align_da_ops.obs.stations import (
    STATIONS_CSV,
    bufr_stations,
    fibonacci_lattice,
    generate_rule_stations,
    in_land_boxes,
    load_stations,
)

BUFR = Path(__file__).resolve().parent.parent / "data" / "bufr"
T = np.datetime64("2000-01-01T00:00:00", "s") + np.arange(5) * np.timedelta64(6, "h")
CYCLE = T[2]


@pytest.fixture
def truth(layout) -> Truth:
    lat, lon = gaussian_latitudes(16), longitudes(32)
    gen = torch.Generator().manual_seed(0)
    states = 250.0 + torch.randn((len(T), layout.n_channels, 16, 32), generator=gen, dtype=torch.float64)
    return Truth(states, T, layout, lat, lon)


def test_random_mask_samples_the_truth_exactly(truth, layout):
    cfg = RandomMaskNetwork(fraction=0.05, noise=False)
    d = draw_network(cfg, truth, CYCLE)
    b = d.batch
    n_points = round(0.05 * 16 * 32)
    assert len(b) == n_points * layout.n_channels and len(np.unique(b.report)) == n_points
    assert (b.time == CYCLE).all() and (b.obs_type == "grid").all() and b.passed.all()
    j = np.searchsorted(truth.latitudes, b.latitude)
    i = np.searchsorted(truth.longitudes, b.longitude)
    assert np.array_equal(truth.latitudes[j], b.latitude) and np.array_equal(truth.longitudes[i], b.longitude)
    c = np.asarray(
        [
            layout.channel_index(v, int(p / 100)) if np.isfinite(p) else layout.channel_index(v)
            for v, p in zip(b.variable, b.pressure)
        ]
    )
    np.testing.assert_array_equal(b.value, truth.states[2].numpy()[c, j, i])


def test_noise_has_the_configured_std(truth):
    d = draw_network(RandomMaskNetwork(fraction=0.5, errors={"temperature": 0.5}), truth, CYCLE)
    b = d.batch
    for var, sigma in (("temperature", 0.5), ("geopotential", 100.0), ("surface_pressure", 100.0)):
        resid = (b.value - d.truth_values)[b.variable == var]
        assert np.std(resid) == pytest.approx(sigma, rel=0.1) and abs(np.mean(resid)) < 0.2 * sigma
        assert np.all(b.error[b.variable == var] == sigma)


def test_draws_are_reproducible_and_depend_on_experiment_cycle_and_network(truth):
    cfg = StationNetwork(max_stations=60, gross_error_rate=0.1, missing_rate=0.1)
    a = draw_network(cfg, truth, CYCLE, experiment="e1").batch
    assert a.equals(draw_network(cfg, truth, CYCLE, experiment="e1").batch)
    assert not a.equals(draw_network(cfg, truth, CYCLE, experiment="e2").batch)
    assert not a.equals(draw_network(cfg, truth, T[3], experiment="e1").batch)
    renamed = cfg.model_copy(update={"name": "other"})
    assert not np.array_equal(draw_network(renamed, truth, CYCLE, experiment="e1").batch.station, a.station)


def test_station_network_is_off_grid_land_biased_and_within_the_window(truth):
    cfg = StationNetwork(sonde_time_jitter=timedelta(minutes=30))
    b = draw_network(cfg, truth, CYCLE).batch
    assert set(b.obs_type) == {"synop", "temp"}
    on_grid = np.isin(b.latitude, truth.latitudes) & np.isin(b.longitude, truth.longitudes)
    assert on_grid.mean() < 0.01
    assert in_land_boxes(b.latitude, b.longitude).mean() > 0.6  # the boxes cover ~25 % of the sphere
    half = np.timedelta64(3, "h")
    assert ((b.time > CYCLE - half) & (b.time <= CYCLE + half)).all()
    sondes = b.select(b.obs_type == "temp")
    assert (np.abs(sondes.time - CYCLE) <= np.timedelta64(30, "m")).all()
    one = sondes.select(sondes.report == sondes.report[0])
    assert sorted(set(one.pressure / 100)) == sorted(cfg.levels_hpa) and len(one) == 9 * 4
    assert len(set(b.select(b.obs_type == "synop").time)) > 100  # spread through the window


def test_gross_errors_and_missing_reports(truth):
    cfg = StationNetwork(gross_error_rate=0.1, missing_rate=0.2, gross_error_sigmas=(8.0, 9.0))
    d = draw_network(cfg, truth, CYCLE)
    b, dev = d.batch, np.abs(d.batch.value - d.truth_values) / d.batch.error
    assert 0.07 < d.gross.mean() < 0.13
    assert np.all(dev[d.gross] > 8.0 - 5.0) and np.median(dev[~d.gross & b.passed]) < 1.5
    missing = b.qc == QCFlag.MISSING
    assert np.isnan(b.value[missing]).all() and 0.1 < missing.mean() < 0.3
    per_report = pd.Series(missing).groupby(b.report).agg(["min", "max"])
    assert (per_report["min"] == per_report["max"]).all()  # whole reports go missing


def test_swath_follows_the_orbit_and_moves_between_cycles(truth):
    cfg = SwathNetwork(across_track=1, levels_hpa=(500,))
    fp = swath_footprints(cfg, CYCLE - np.timedelta64(3, "h"), CYCLE + np.timedelta64(3, "h"))
    assert np.abs(fp["latitude"]).max() == pytest.approx(180.0 - 98.7, abs=0.5)  # nadir never beyond 81.3°
    lat, lon = np.radians(fp["latitude"]), np.radians(fp["longitude"])
    step = 6371.0 * np.arccos(
        np.clip(np.sin(lat[:-1]) * np.sin(lat[1:]) + np.cos(lat[:-1]) * np.cos(lat[1:]) * np.cos(np.diff(lon)), -1, 1)
    )
    assert np.median(step) == pytest.approx(250.0, rel=0.1)  # the Earth turning under the track adds < 10 %
    a = draw_network(SwathNetwork(), truth, CYCLE).batch
    b = draw_network(SwathNetwork(), truth, T[3]).batch
    assert (a.obs_type == "swath").all() and not np.allclose(a.longitude[:50], b.longitude[:50])
    wide = swath_footprints(SwathNetwork(swath_width_km=2000.0, across_track=3), CYCLE, CYCLE + np.timedelta64(60, "s"))
    edge = np.radians(np.stack([wide["latitude"][[0, 2]], wide["longitude"][[0, 2]]]))
    cos_d = np.sin(edge[0, 0]) * np.sin(edge[0, 1]) + np.cos(edge[0, 0]) * np.cos(edge[0, 1]) * np.cos(
        edge[1, 0] - edge[1, 1]
    )
    assert 6371.0 * np.arccos(cos_d) == pytest.approx(2000.0, rel=1e-6)


def test_truth_is_linear_in_time_between_stored_states(truth, layout):
    lin = Truth(
        truth.states[:1] + torch.arange(len(T), dtype=torch.float64)[:, None, None, None],
        T,
        layout,
        truth.latitudes,
        truth.longitudes,
    )
    d = draw_network(RandomMaskNetwork(fraction=0.02, noise=False, time_spread=True), lin, CYCLE)
    hours = (d.batch.time - T[0]).astype(np.int64) / 21600.0
    base = draw_network(
        RandomMaskNetwork(fraction=0.02, noise=False, time_spread=True),
        Truth(truth.states[:1].expand(len(T), -1, -1, -1), T, layout, truth.latitudes, truth.longitudes),
        CYCLE,
    )
    np.testing.assert_allclose(d.batch.value - base.batch.value, hours, atol=1e-9)


def test_variables_the_truth_lacks_are_a_clear_error(truth):
    with pytest.raises(ObservationError, match="2m_temperature"):
        draw_network(StationNetwork(surface_variables=("2m_temperature",)), truth, CYCLE)


def test_simulate_concatenates_every_network(truth):
    cfg = ObservationsConfig(networks=(RandomMaskNetwork(fraction=0.01), SwathNetwork(name="noaa")))
    d = simulate(cfg, truth, CYCLE)
    assert set(d.batch.obs_type) == {"grid", "swath"} and len(d.truth_values) == len(d.batch) == len(d.gross)


def test_station_csv_is_the_documented_rule_plus_decoded_bufr_stations():
    shipped = load_stations(STATIONS_CSV)
    rule = generate_rule_stations()
    got_rule = shipped[shipped.source == "rule"].reset_index(drop=True)
    np.testing.assert_allclose(
        got_rule[["latitude", "longitude"]].to_numpy(), rule[["latitude", "longitude"]].to_numpy(), atol=1e-4
    )
    assert got_rule.upper_air.tolist() == rule.upper_air.astype(bool).tolist()
    real = bufr_stations(BUFR).reset_index(drop=True)
    got_real = shipped[shipped.source != "rule"].reset_index(drop=True)
    assert got_real.station_id.tolist() == real.station_id.tolist()
    np.testing.assert_allclose(
        got_real[["latitude", "longitude"]].to_numpy(), real[["latitude", "longitude"]].to_numpy(), atol=1e-4
    )
    assert 300 <= len(shipped) <= 1000 and shipped.upper_air.sum() >= 100
    lat, _ = fibonacci_lattice(10000)
    assert abs(np.mean(np.sin(np.radians(lat)))) < 1e-3  # near-equal-area lattice


@pytest.mark.slow
def test_draw_from_the_real_tiny_nature_run(tiny_nature_run):
    """The Held–Suarez store: its layout, times and fields feed the networks (slow: the fixture runs the core)."""
    from align_da_ops.data.nature_run import open_nature_run
    from align_da_ops.obs.operators import GridInterpolator

    truth = Truth.from_dataset(open_nature_run(tiny_nature_run).load())
    assert truth.layout.surface == ("surface_pressure",) and truth.states.shape[0] == len(truth.times)
    cycle = truth.times[2]
    d = draw_network(RandomMaskNetwork(fraction=0.02, noise=False), truth, cycle)
    op = GridInterpolator(truth.layout, truth.latitudes, truth.longitudes)
    np.testing.assert_array_equal(d.batch.value, op(truth.states[2], d.batch).numpy())
    z500 = d.batch.value[(d.batch.variable == "geopotential") & (d.batch.pressure == 50000.0)]
    assert 4.5e4 < z500.min() and z500.max() < 6.0e4  # Held–Suarez z500 5040-5800 m
