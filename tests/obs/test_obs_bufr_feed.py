"""Decoding the real sample BUFR files (counts, values, quirks) and the directory-drop feed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from align_da_ops.grid import VARIABLES
from align_da_ops.obs.batch import QCFlag
from align_da_ops.obs.bufr import decode_bufr_bytes, decode_bufr_file, isa_pressure, scan_messages
from align_da_ops.obs.feed import ObsFeed
from align_da_ops.obs.ioda import read_ioda
from align_da_ops.obs.qc import check_gross

BUFR = Path(__file__).resolve().parent.parent / "data" / "bufr"

# file -> (messages, reports, {obs_type: reports}, reports with observations, observations).
# Messages/reports counted with ecCodes' bufr_ls/bufr_dump; observation counts pin the decoder
# (hand-checked: aircraft 10 x (t, u, v); AMV 128 x (u, v); TEMP 258 values less the 0 Pa level).
EXPECTED = {
    "eccodes_synop.bufr": (3, 3, {"synop": 3}, 3, 14),
    "eccodes_synop_multi_subset.bufr": (1, 12, {"synop": 12}, 12, 18),
    "eccodes_temp.bufr": (3, 3, {"temp": 3}, 3, 257),
    "eccodes_acars.bufr": (1, 1, {"aircraft": 1}, 1, 3),
    "eccodes_amv-meteosat-9.bufr": (1, 128, {"amv": 128}, 128, 256),
    "eccodes_buoy-drifting.bufr": (2, 2, {"marine": 2}, 2, 3),
    "pdbufr_temp_small.bufr": (7, 7, {"temp": 7}, 7, 942),
    "pdbufr_aircraft_small.bufr": (10, 10, {"aircraft": 10}, 10, 30),
    "pdbufr_syn_new.bufr": (3, 3, {"synop": 3}, 3, 14),
    "pdbufr_obs_3day.bufr": (50, 50, {"synop": 50}, 48, 228),  # two reports carry only missing values
}


@pytest.fixture(scope="module")
def decoded():
    return {name: decode_bufr_file(BUFR / name) for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_files_decode_with_expected_counts_and_sane_values(decoded, name):
    d = decoded[name]
    messages, reports, by_type, with_obs, n_obs = EXPECTED[name]
    r = d.report
    assert (r.messages, r.decoded, r.failed, r.reports, r.by_type) == (messages, messages, 0, reports, by_type)
    assert r.unusable_reason() is None and r.observations == len(d.batch) == n_obs
    b = d.batch
    assert (check_gross(b).qc == QCFlag.PASS).all(), b.to_dataframe()[check_gross(b).qc != 0]
    upper = np.asarray([VARIABLES[v].upper_air for v in b.variable])
    np.testing.assert_array_equal(upper, ~b.is_surface)
    assert np.all((b.pressure[upper] > 500.0) & (b.pressure[upper] < 110000.0))
    assert np.all(np.isfinite(b.error)) and np.all(b.error > 0)
    assert len(np.unique(b.report)) == with_obs


def test_temp_levels_walk_keeps_elements_on_their_pressure(decoded):
    """TEMP arrays differ in length (wind-only levels): values must stay with their own level."""
    b = decoded["eccodes_temp.bufr"].batch
    first = b.select(b.report == b.report.min())
    assert first.station[0] == "06060"
    level = first.select(first.pressure == 99500.0)
    got = {v: x for v, x in zip(level.variable, level.value)}
    assert got["temperature"] == pytest.approx(272.3) and got["geopotential"] == pytest.approx(520.0)
    # 110 deg at 6 m/s: wind from the ESE blows towards the WNW
    assert got["u_component_of_wind"] == pytest.approx(-6.0 * np.sin(np.radians(110)))
    assert got["v_component_of_wind"] == pytest.approx(-6.0 * np.cos(np.radians(110)))
    wind_only = first.select(first.pressure == 96100.0)  # wind but no temperature at this level
    assert sorted(wind_only.variable) == ["u_component_of_wind", "v_component_of_wind"]
    t = first.select(first.variable == "temperature")
    w = first.select(first.variable == "u_component_of_wind")
    assert len(t) != len(w)  # unequal arrays, each on its own pressures
    # geopotential increases upwards along the profile
    z = first.select(first.variable == "geopotential")
    order = np.argsort(-z.pressure)
    assert np.all(np.diff(z.value[order]) > 0)


def test_known_quirks(decoded):
    syn = decoded["pdbufr_syn_new.bufr"].batch  # newer template: station pressure is nonCoordinatePressure,
    litang = syn.select(syn.station == "56257")  # the 925 hPa "pressure" of a high station is not it
    sp = litang.value[litang.variable == "surface_pressure"]
    assert sp.tolist() == [63030.0] and litang.elevation[0] == 3950.0
    assert str(syn.time[0]) == "2020-03-15T00:00:00"
    multi = decoded["eccodes_synop_multi_subset.bufr"].batch  # 12 uncompressed subsets, ranks run across them
    assert len(set(multi.station)) == 12 and (multi.variable == "2m_temperature").sum() == 12
    sondes = decoded["pdbufr_temp_small.bufr"].batch
    assert sondes.latitude.min() == -90.0  # South Pole station decodes as -90.00000000000001
    amv = decoded["eccodes_amv-meteosat-9.bufr"].batch  # compressed: first vector per subset, not intermediates
    speed = np.hypot(amv.value[amv.variable == "u_component_of_wind"], amv.value[amv.variable == "v_component_of_wind"])
    assert speed[0] == pytest.approx(32.7) and len(speed) == 128
    ship = decoded["pdbufr_obs_3day.bufr"].batch  # station 03105 reports an implausible 80 m/s 10 m wind
    w = ship.select((ship.station == "03105") & (ship.variable == "10m_v_component_of_wind"))
    assert w.value[0] == pytest.approx(-80.0 * np.cos(np.radians(150)))


def test_bad_messages_are_counted_not_fatal():
    good = (BUFR / "eccodes_synop.bufr").read_bytes()
    messages, _, _ = scan_messages(good)
    broken = bytearray(messages[0])
    broken[60:200] = b"\xff" * 140  # corrupt the data section but keep the framing
    d = decode_bufr_bytes(b"junk" + bytes(broken) + messages[1] + b"more junk" + messages[2])
    assert d.report.messages == 3 and d.report.decoded + d.report.failed == 3 and d.report.decoded >= 2
    assert d.report.unusable_reason() is None


def test_isa_pressure():
    assert isa_pressure(np.array([0.0]))[0] == pytest.approx(101325.0)
    assert isa_pressure(np.array([11000.0]))[0] == pytest.approx(22632.0, rel=1e-3)
    assert isa_pressure(np.array([5000.0]))[0] == pytest.approx(54020.0, rel=2e-3)


def test_feed_processes_good_files_and_quarantines_bad_ones(tmp_path):
    feed = ObsFeed(tmp_path / "feed")
    shutil.copy(BUFR / "eccodes_temp.bufr", feed.incoming / "temp.bufr")
    data = (BUFR / "pdbufr_aircraft_small.bufr").read_bytes()
    (feed.incoming / "garbage.bin").write_bytes(np.random.default_rng(0).bytes(4096).replace(b"BUFR", b"XXXX"))
    (feed.incoming / "empty.bufr").write_bytes(b"")
    (feed.incoming / "truncated.bufr").write_bytes(data[: len(data) // 2 + 100])
    (feed.incoming / "netcdf.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (feed.incoming / "inflight.bufr.part").write_bytes(data)
    results = {r.name: r for r in feed.poll()}
    assert set(results) == {"temp.bufr", "garbage.bin", "empty.bufr", "truncated.bufr", "netcdf.nc"}
    assert results["temp.bufr"].status == "processed" and results["temp.bufr"].reports == 3
    assert (feed.processed / "temp.bufr").exists() and read_ioda(results["temp.bufr"].ioda).equals(
        decode_bufr_file(BUFR / "eccodes_temp.bufr").batch
    )
    reasons = {
        n: (feed.quarantine / f"{n}.reason.txt").read_text()
        for n in ("garbage.bin", "empty.bufr", "truncated.bufr", "netcdf.nc")
    }
    assert "no 'BUFR' marker" in reasons["garbage.bin"]
    assert "empty file" in reasons["empty.bufr"]
    assert "truncated" in reasons["truncated.bufr"] and "declares" in reasons["truncated.bufr"]
    assert "no 'BUFR' marker" in reasons["netcdf.nc"] and "HDF" in reasons["netcdf.nc"]
    for name in reasons:  # kept byte for byte, never deleted
        assert (feed.quarantine / name).exists()
    assert (feed.quarantine / "truncated.bufr").read_bytes() == data[: len(data) // 2 + 100]
    assert [p.name for p in feed.pending()] == []  # the in-flight file is ignored, not taken
    assert (feed.incoming / "inflight.bufr.part").exists()
    assert feed.poll() == []  # decoded once
    shutil.copy(BUFR / "eccodes_temp.bufr", feed.incoming / "temp.bufr")  # same name again: nothing overwritten
    again = feed.poll()[0]
    assert again.path.name == "temp.bufr.1" and (feed.processed / "temp.bufr").exists()
    assert len(feed.collect()) == 2 * results["temp.bufr"].observations
    assert len(feed.collect(np.datetime64("1950-01-01"), np.datetime64("1950-01-02"))) == 0


def test_feed_survives_a_crashing_decoder(tmp_path):
    def boom(path):
        raise RuntimeError("decoder bug")

    feed = ObsFeed(tmp_path, decoder=boom)
    (feed.incoming / "a.bufr").write_bytes(b"BUFR")
    (result,) = feed.poll()
    assert result.status == "quarantined" and "decoder bug" in (feed.quarantine / "a.bufr.reason.txt").read_text()
