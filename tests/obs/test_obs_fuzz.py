"""Property tests on hostile bytes: mutated real BUFR files, corrupted decoded files, hostile IODA columns.

Decoders must return counts (never raise, never crash the process); what is intact must decode as if clean.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from align_da_ops.errors import ObservationError
from align_da_ops.grid import VARIABLES
from align_da_ops.obs.batch import ObsBatch, QCFlag
from align_da_ops.obs.bufr import decode_bufr_bytes, scan_messages
from align_da_ops.obs.feed import ObsFeed
from align_da_ops.obs.ioda import IODA_NAMES, read_ioda, read_ioda_checked, write_ioda

HERE = Path(__file__).resolve().parent
SAMPLE_DIRS = (HERE.parent / "data" / "bufr", Path("/work/shared/data/bufr"))
SAMPLES = {}  # the real sample files, deduplicated by content
for _d in SAMPLE_DIRS:
    for _p in sorted(_d.glob("*.bufr")) if _d.is_dir() else ():
        SAMPLES.setdefault(hashlib.sha256(_p.read_bytes()).hexdigest(), _p.read_bytes())
SAMPLE_BYTES = [SAMPLES[k] for k in sorted(SAMPLES)]
MESSAGES = [m for data in SAMPLE_BYTES for m in scan_messages(data)[0]]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def check_report_and_batch(d) -> None:
    """Counts add up and every row keeps the ObsBatch contract."""
    r, b = d.report, d.batch
    assert r.decoded + r.failed + r.skipped == r.messages
    assert r.observations == len(b) and sum(r.by_type.values()) == r.reports
    assert np.all(np.abs(b.latitude) <= 90.0) and np.all((b.longitude >= 0) & (b.longitude < 360))
    assert np.all(np.isfinite(b.value))
    assert np.all((b.time >= np.datetime64("1850-01-01")) & (b.time < np.datetime64("2200-01-01")))
    assert np.all((b.report >= 0) & (b.report < max(r.reports, 1)))
    if r.unusable_reason() is None:
        assert r.decoded >= 1


def same_rows_but_report(a: ObsBatch, b: ObsBatch) -> bool:
    return len(a) == len(b) and a.replace(report=np.zeros(len(a))).equals(b.replace(report=np.zeros(len(b))))


def test_samples_are_there():
    assert len(SAMPLE_BYTES) >= 10 and len(MESSAGES) >= 80


@FUZZ
@given(data=st.data())
def test_mutated_bufr_files_never_break_the_decoder(data):
    raw = bytearray(data.draw(st.sampled_from(SAMPLE_BYTES)))
    for i, byte in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=16)):
        raw[i] = byte
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    d = decode_bufr_bytes(bytes(raw[:cut]))
    check_report_and_batch(d)


@FUZZ
@given(data=st.data())
def test_a_mutated_message_between_good_ones_leaves_them_intact(data):
    """Oracle: the good messages before and after decode exactly as they do alone."""
    before, after = data.draw(st.sampled_from(MESSAGES)), data.draw(st.sampled_from(MESSAGES))
    bad = bytearray(data.draw(st.sampled_from(MESSAGES)))
    body = st.integers(8, len(bad) - 5)  # keep "BUFR", the length and "7777": the framing still holds
    for i, byte in data.draw(st.lists(st.tuples(body, st.integers(0, 255)), min_size=1, max_size=16)):
        bad[i] = byte
    d = decode_bufr_bytes(before + bytes(bad) + after)
    check_report_and_batch(d)
    assert d.report.messages == 3
    first, last = decode_bufr_bytes(before).batch, decode_bufr_bytes(after).batch
    n = len(d.batch)
    assert d.batch.select(np.arange(len(first))).equals(first)
    assert same_rows_but_report(d.batch.select(np.arange(n - len(last), n)), last)


@pytest.fixture(scope="module")
def clean_feed():
    """A polled feed holding two decoded files (SYNOP and TEMP), and what each decodes to."""
    root = Path(tempfile.mkdtemp(prefix="feedfuzz"))
    feed = ObsFeed(root)
    here = HERE.parent / "data" / "bufr"
    for name in ("eccodes_synop.bufr", "eccodes_temp.bufr"):
        shutil.copy(here / name, feed.incoming / name)
    feed.poll()
    expected = {n: decode_bufr_bytes((here / n).read_bytes()).batch for n in os.listdir(feed.processed)}
    yield root, expected
    shutil.rmtree(root, ignore_errors=True)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_corrupted_decoded_file_is_quarantined_never_read(clean_feed, data):
    """HDF5 may crash on a corrupt file: the feed's checksum must keep any change away from it."""
    root, expected = clean_feed
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "feed"
        shutil.copytree(root, copy, symlinks=True)
        feed = ObsFeed(copy)
        target = feed.decoded / "eccodes_synop.bufr.ioda.nc"
        raw = bytearray(target.read_bytes())
        edits = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=16))
        for i, byte in edits:
            raw[i] = byte
        cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
        changed = bytes(raw[:cut]) != target.read_bytes()
        target.write_bytes(bytes(raw[:cut]))
        got = feed.collect()
        if changed:
            assert got.equals(expected["eccodes_temp.bufr"])
            assert (feed.quarantine / "eccodes_synop.bufr.ioda.nc.reason.txt").exists()
        else:
            assert len(got) == len(expected["eccodes_temp.bufr"]) + len(expected["eccodes_synop.bufr"])
        assert feed.collect().equals(got)  # and the next cycle is the same


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_the_feed_takes_any_bytes_and_loses_none(data):
    blobs = data.draw(st.lists(st.sampled_from(SAMPLE_BYTES), min_size=1, max_size=3))
    files = {}
    for k, blob in enumerate(blobs):
        raw = bytearray(blob)
        for i, byte in data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=8)):
            raw[i] = byte
        files[f"f{k}.bufr"] = bytes(raw[: data.draw(st.one_of(st.none(), st.integers(0, len(raw))))])
    with tempfile.TemporaryDirectory() as tmp:
        feed = ObsFeed(Path(tmp))
        for name, blob in files.items():
            (feed.incoming / name).write_bytes(blob)
        results = {r.name: r for r in feed.poll()}
        assert set(results) == set(files)
        for name, r in results.items():
            assert r.path.read_bytes() == files[name]  # kept byte for byte, wherever it went
            assert r.status == "processed" or (feed.quarantine / f"{r.path.name}.reason.txt").exists()
        got = feed.collect()
        assert len(got) == sum(r.observations for r in results.values())


_rows = st.integers(1, 8)
_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_ioda_rows_breaking_the_contract_are_dropped_one_by_one(data):
    """Hostile column values in an IODA file: the good rows come back exactly, the others are described."""
    n = data.draw(_rows)
    rows = lambda s: data.draw(st.lists(s, min_size=n, max_size=n))  # noqa: E731
    names = [IODA_NAMES[v][0] for v in sorted(VARIABLES)[:4]] + ["humidity", "relativeHumidity"]
    variable = np.asarray(rows(st.sampled_from(names)), dtype=object)
    cols = {
        "latitude": np.asarray(rows(st.one_of(st.floats(-90, 90), _any_float)), dtype=float),
        "longitude": np.asarray(rows(st.one_of(st.floats(-720, 720), _any_float)), dtype=float),
        "pressure": np.asarray(rows(st.one_of(st.just(np.nan), st.floats(1, 1e5), _any_float)), dtype=float),
        "elevation": np.zeros(n),
        "time": np.asarray(rows(st.integers(-(2**40), 2**40)), dtype=np.int64),
        "value": np.asarray(rows(_any_float), dtype=float),
        "qc": np.asarray(rows(st.sampled_from([0, 1, 2, 42, -1])), dtype=np.int32),
        "obs_type": np.asarray(["t"] * n, dtype=object),
        "station": np.asarray(["s"] * n, dtype=object),
        "report": np.arange(n, dtype=np.int64),
    }
    meta = {"latitude": "latitude", "longitude": "longitude", "pressure": "pressure", "elevation": "stationElevation",
            "time": "dateTime", "obs_type": "obsType", "station": "stationIdentification", "report": "sequenceNumber"}
    # a foreign IODA v3 file (no RowNumber): one Location per row, one variable each; rows come back by
    # variable (file order), then Location
    written = list(dict.fromkeys(variable.tolist()))
    order = np.lexsort((np.arange(n), [written.index(v) for v in variable]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.nc"
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("Location", n)
            grp = nc.createGroup("MetaData")
            for column, name in meta.items():
                kind = str if cols[column].dtype == object else cols[column].dtype
                grp.createVariable(name, kind, ("Location",))[:] = cols[column]
            for name in written:
                at = variable == name
                for group, values, fill in (("ObsValue", cols["value"], np.nan), ("ObsError", np.ones(n), np.nan),
                                            ("PreQC", cols["qc"], -2147483647)):
                    grp = nc[group] if group in nc.groups else nc.createGroup(group)
                    var = grp.createVariable(name, values.dtype, ("Location",), fill_value=fill)
                    var[:] = np.where(at, values, fill)
                    if group != "PreQC":
                        var.units = dict(IODA_NAMES.values()).get(name, "m s-1")
        cols = {k: v[order] for k, v in cols.items()}
        variable = variable[order]
        batch, problems = read_ioda_checked(path)
        lat, lon, p = cols["latitude"], cols["longitude"], cols["pressure"]
        with np.errstate(invalid="ignore"):
            good = (
                (np.abs(lat) <= 90)
                & np.isfinite(lon)
                & (np.isnan(p) | ((p > 0) & np.isfinite(p)))
                & np.isin(variable.astype(str), [name for name, _ in IODA_NAMES.values()])
                & np.isin(cols["qc"], [int(f) for f in QCFlag])
            )
        assert len(batch) == good.sum() and (len(problems) > 0) == (not good.all())
        np.testing.assert_array_equal(batch.report, cols["report"][good])
        np.testing.assert_array_equal(batch.value, cols["value"][good])
        if good.all():
            assert read_ioda(path).equals(batch)
        else:
            with pytest.raises(ObservationError):
                read_ioda(path)


def test_ioda_write_leaves_no_temporary_after_a_failure(tmp_path, monkeypatch):
    import align_da_ops.obs.ioda as ioda

    batch = decode_bufr_bytes(MESSAGES[0]).batch

    def broken(*args):
        (tmp_path / ".x.nc.tmp").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ioda, "_write", broken)
    with pytest.raises(OSError):
        write_ioda(batch, tmp_path / "x.nc")
    assert list(tmp_path.iterdir()) == []
