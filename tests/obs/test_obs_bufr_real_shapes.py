"""BUFR shapes met in real feeds but not in the samples, written here with ecCodes.

Aircraft reports with an altitude instead of pressure (ISA pressure, marked derived), station reports
split over two messages (one report), and the decoder's fast paths (layout cache, numericValues reads,
chunked worker) giving the same rows as the plain per-key reads.
"""

from __future__ import annotations

from pathlib import Path

import eccodes
import numpy as np
import pytest

from align_da_ops.obs import bufr
from align_da_ops.obs.bench import bench_decode, synthetic_synop
from align_da_ops.obs.bufr import DERIVED_PRESSURE_SUFFIX, decode_bufr_bytes, isa_pressure, scan_messages

BUFR = Path(__file__).resolve().parent.parent / "data" / "bufr"
# The aircraft template of pdbufr_aircraft_small.bufr (without its quality section), 007004 pressure -> ALTITUDE.
ALTITUDE = -1
AIRCRAFT = [1006, 1008, 2061, 2062, 2002, 2005, 2070, 2063, 2001, 301011, 301012, 5002, 6002, 8004, ALTITUDE]
AIRCRAFT += [8021, 11001, 11002, 12001]
KEY = {7004: "pressure", 7002: "height", 7010: "flightLevel", 10053: "globalNavigationSatelliteSystemAltitude"}
WHEN = {"year": 2024, "month": 5, "day": 17, "hour": 12, "minute": 30}


def isa_closed_form(h: float) -> float:
    """ICAO standard atmosphere from its constants (T0 288.15 K, lapse 6.5 K/km to 11 km, then isothermal)."""
    g0, molar, gas, t0, lapse, p0 = 9.80665, 0.0289644, 8.31432, 288.15, 0.0065, 101325.0
    if h <= 11000.0:
        return p0 * (1.0 - lapse * h / t0) ** (g0 * molar / (gas * lapse))
    t11 = t0 - lapse * 11000.0
    return isa_closed_form(11000.0) * np.exp(-g0 * molar * (h - 11000.0) / (gas * t11))


def message(category: int, descriptors: list[int], values: dict, n: int, compressed: bool = True) -> bytes:
    """One BUFR 4 message of `n` subsets: `values` {key: scalar or per-subset list} set as arrays."""
    h = eccodes.codes_bufr_new_from_samples("BUFR4")
    try:
        eccodes.codes_set(h, "dataCategory", category)
        eccodes.codes_set(h, "numberOfSubsets", n)
        eccodes.codes_set(h, "compressedData", int(compressed))
        eccodes.codes_set_array(h, "unexpandedDescriptors", descriptors)
        for key, value in values.items():
            value = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * n
            if isinstance(value[0], str):
                eccodes.codes_set_string_array(h, key, value)
            else:
                eccodes.codes_set_array(h, key, [float(v) for v in value])
        eccodes.codes_set(h, "pack", 1)
        return eccodes.codes_get_message(h)
    finally:
        eccodes.codes_release(h)


def aircraft(descriptor: int, altitudes: list[float], compressed: bool = True, flight: str = "FL") -> bytes:
    """Aircraft reports (flights FL0000...) at `altitudes` in the unit of `descriptor` (m or Pa)."""
    n = len(altitudes)
    values = {
        "aircraftFlightNumber": [f"{flight}{i:04d}" for i in range(n)],
        **WHEN,
        "latitude": np.linspace(10.0, 20.0, n),
        "longitude": np.linspace(-30.0, 30.0, n),
        KEY[descriptor]: altitudes,
        "airTemperature": 250.0,
        "windDirection": 270.0,
        "windSpeed": 10.0,
    }
    return message(4, [descriptor if d == ALTITUDE else d for d in AIRCRAFT], values, n, compressed)


HEIGHTS = [0.0, 5000.0, 11000.0, 15000.0]


@pytest.mark.parametrize("descriptor", [7002, 10053, 7010], ids=["height", "gnss_altitude", "flight_level"])
def test_aircraft_altitudes_become_isa_pressures_marked_derived(descriptor):
    d = decode_bufr_bytes(aircraft(descriptor, HEIGHTS))
    r, b = d.report, d.batch
    assert (r.messages, r.decoded, r.failed, r.reports) == (1, 1, 0, 4)
    assert r.observations == len(b) == 12 and r.derived_pressure == 12  # t, u, v per report, none dropped
    assert set(b.obs_type) == {"aircraft" + DERIVED_PRESSURE_SUFFIX}
    assert set(b.station) == {f"FL{i:04d}" for i in range(4)}
    for i, h in enumerate(HEIGHTS):
        p = b.pressure[b.station == f"FL{i:04d}"]
        assert len(p) == 3 and np.all(p == p[0])
        assert p[0] == pytest.approx(isa_closed_form(h), rel=1e-4)
    assert b.pressure[b.station == "FL0000"][0] == pytest.approx(101325.0, rel=1e-9)
    assert b.pressure[b.station == "FL0001"][0] == pytest.approx(54020.0, rel=1e-4)
    assert b.pressure[b.station == "FL0002"][0] == pytest.approx(22632.0, rel=1e-4)
    t = b.select(b.variable == "temperature")
    assert np.allclose(t.value, 250.0) and np.all(t.error == 1.0)  # the aircraft errors apply


def test_measured_pressure_wins_and_is_not_marked():
    d = decode_bufr_bytes(aircraft(7004, [30000.0, 25000.0]) + aircraft(7002, [9000.0], flight="ZZ"))
    b = d.batch
    assert d.report.reports == 3 and d.report.derived_pressure == 3
    measured = b.select(b.obs_type == "aircraft")
    assert sorted(set(measured.pressure)) == [25000.0, 30000.0] and len(measured) == 6
    derived = b.select(b.obs_type == "aircraft" + DERIVED_PRESSURE_SUFFIX)
    assert set(derived.station) == {"ZZ0000"}
    assert derived.pressure[0] == pytest.approx(isa_closed_form(9000.0), rel=1e-4)


def test_uncompressed_single_report_aircraft_messages():
    """The shape of most real AMDAR/ACARS files: one uncompressed message per report."""
    data = b"".join(aircraft(7002, [h], compressed=False, flight=f"A{k}") for k, h in enumerate(HEIGHTS * 3))
    d = decode_bufr_bytes(data)
    assert (d.report.messages, d.report.reports, d.report.observations) == (12, 12, 36)
    assert np.all(np.char.endswith(d.batch.obs_type, DERIVED_PRESSURE_SUFFIX))
    first = d.batch.select(d.batch.station == "A10000")  # the 11th message: 5000 m
    assert first.pressure[0] == pytest.approx(isa_closed_form(5000.0), rel=1e-4)


def test_isa_pressure_layers():
    h = np.array([-400.0, 0.0, 1000.0, 5000.0, 11000.0, 15000.0, 20000.0])
    assert np.allclose(isa_pressure(h), [isa_closed_form(x) for x in h], rtol=1e-4)
    assert isa_pressure(np.array([25000.0]))[0] == pytest.approx(2511.0, rel=2e-3)  # ICAO table: 25 km
    eps = np.array([-1e-6, 1e-6])
    for top in (11000.0, 20000.0):  # continuous at the layer boundaries
        below, above = isa_pressure(top + eps)
        assert above == pytest.approx(below, rel=1e-6)
    assert np.isnan(isa_pressure(np.array([np.nan])))[0]


# -- one report spread over two messages ----------------------------------------------------
SYNOP_HEAD = [301001, 301011, 301012, 301021]  # block and station number, date, time, latitude, longitude
SYNOP_MASS = SYNOP_HEAD + [10004, 10051, 12101]  # station pressure, MSL pressure, temperature
SYNOP_WIND = SYNOP_HEAD + [11001, 11002]


def synop(descriptors: list[int], station: int, hour: int = 12, lat: float = 48.0, **values) -> bytes:
    head = {"blockNumber": station // 1000, "stationNumber": station % 1000, **WHEN, "hour": hour}
    return message(0, descriptors, {**head, "latitude": lat, "longitude": 11.0, **values}, 1, compressed=False)


MASS = {"nonCoordinatePressure": 95000.0, "pressureReducedToMeanSeaLevel": 101000.0, "airTemperature": 280.0}
WIND = {"windDirection": 180.0, "windSpeed": 5.0}


def test_a_station_split_over_two_messages_is_one_report():
    data = (
        synop(SYNOP_MASS, 10865, **MASS)
        + synop(SYNOP_WIND, 10865, **WIND)  # the same station and time: its wind
        + synop(SYNOP_MASS + [11001, 11002], 10870, **MASS, **WIND)  # another station, whole
        + synop(SYNOP_WIND, 10865, hour=13, **WIND)  # the first station an hour later: another report
    )
    d = decode_bufr_bytes(data)
    r, b = d.report, d.batch
    assert (r.messages, r.decoded, r.reports, r.by_type) == (4, 4, 3, {"synop": 3})
    assert r.observations == len(b) == 5 + 5 + 2
    assert sorted(set(b.report.tolist())) == [0, 1, 2]
    split = b.select((b.station == "10865") & (b.time == np.datetime64("2024-05-17T12:30")))
    assert len(split) == 5 and set(split.report) == {0}  # pressure, MSL, temperature and (u, v) together
    assert set(b.report[b.station == "10870"]) == {1}
    assert set(b.report[b.time == np.datetime64("2024-05-17T13:30")]) == {2}
    alone = decode_bufr_bytes(data, isolate=False)  # the same numbering in-process
    assert alone.batch.equals(b) and alone.report == r


def test_moving_platforms_are_told_apart_by_position():
    """Ships share call signs ("SHIP"): same sign and time at two positions are two reports."""
    ship = [1011, 301011, 301012, 301021, 10051, 12101]

    def report(lat: float) -> bytes:
        values = {"shipOrMobileLandStationIdentifier": "SHIP", **WHEN, "latitude": lat, "longitude": -20.0}
        return message(1, ship, {**values, "pressureReducedToMeanSeaLevel": 100500.0, "airTemperature": 285.0}, 1)

    d = decode_bufr_bytes(report(40.0) + report(45.0) + report(40.0))  # the last one repeats the first
    assert (d.report.messages, d.report.reports, d.report.by_type) == (3, 2, {"marine": 2})
    assert d.batch.report.tolist() == [0, 0, 1, 1, 0, 0]


def test_report_numbers_stay_per_file_when_messages_are_alone():
    m = synop(SYNOP_MASS, 10865, **MASS)
    assert decode_bufr_bytes(m).report.reports == 1
    assert decode_bufr_bytes(m + m).report.reports == 1  # a repeated message is the same report
    assert decode_bufr_bytes(m + synop(SYNOP_MASS, 10865, lat=50.0, **MASS)).report.reports == 1  # fixed station


# -- fast paths -----------------------------------------------------------------------------------
def test_numeric_values_reads_match_per_key_reads(monkeypatch):
    """The layout cache and numericValues positions give the rows the plain per-key reads give."""
    data = b"".join((BUFR / name).read_bytes() for name in sorted(p.name for p in BUFR.glob("*.bufr")))
    fast = decode_bufr_bytes(data, isolate=False)
    assert any(layout.positional for layout in bufr._LAYOUTS.values())  # the fast path was taken
    monkeypatch.setattr(bufr, "_LAYOUTS", {})
    monkeypatch.setattr(bufr, "_check_positions", lambda m, layout: setattr(layout, "positional", False))
    slow = decode_bufr_bytes(data, isolate=False)
    assert not any(layout.positional for layout in bufr._LAYOUTS.values())
    assert fast.batch.equals(slow.batch) and fast.report == slow.report
    assert fast.report.observations == 1765 and fast.report.reports == 219


def test_chunks_round_trip_through_the_worker(monkeypatch):
    """Several chunks per file (small chunks forced) decode as one in-process pass does."""
    messages, _, _ = scan_messages((BUFR / "pdbufr_obs_3day.bufr").read_bytes())
    data = b"".join(messages)
    monkeypatch.setattr(bufr, "_CHUNK_MESSAGES", 7)
    chunked = decode_bufr_bytes(data)
    assert chunked.batch.equals(decode_bufr_bytes(data, isolate=False).batch)
    assert chunked.report.reports == 50 and chunked.report.observations == 228


def test_bench_compares_with_a_plain_eccodes_loop():
    messages, _, _ = scan_messages((BUFR / "pdbufr_obs_3day.bufr").read_bytes())
    generated = synthetic_synop(messages, 120)
    assert len(scan_messages(generated)[0]) == 120
    assert decode_bufr_bytes(generated).report.reports == 120  # every copy its own station
    rows = bench_decode([BUFR / "pdbufr_obs_3day.bufr"], repeats=1, synthetic_messages=120)
    assert [r["file"] for r in rows] == ["pdbufr_obs_3day.bufr", "total", "generated SYNOP (120 messages)"]
    last = rows[-1]
    assert (last["messages"], last["reports"]) == (120, 120)
    assert last["seconds"] > 0 and last["eccodes_loop_s"] > 0
    assert last["ratio"] == pytest.approx(last["seconds"] / last["eccodes_loop_s"], abs=0.01)


def test_an_aircraft_report_split_over_two_messages_is_one_report():
    """Same flight, time, position and level: one report; the same flight at another level: another."""
    base = [1006, 301011, 301012, 5002, 6002, 7002]

    def part(descriptors: list[int], height: float, **values) -> bytes:
        head = {"aircraftFlightNumber": "KL1234", **WHEN, "latitude": 52.3, "longitude": 4.76, "height": height}
        return message(4, base + descriptors, {**head, **values}, 1, compressed=False)

    data = part([12001], 3000.0, airTemperature=270.0) + part([11001, 11002], 3000.0, windDirection=90.0, windSpeed=8.0)
    data += part([12001], 3500.0, airTemperature=267.0)
    d = decode_bufr_bytes(data)
    assert (d.report.messages, d.report.reports, d.report.observations) == (3, 2, 4)
    assert d.batch.report.tolist() == [0, 0, 0, 1]
