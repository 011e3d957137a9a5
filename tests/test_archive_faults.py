"""Archive fault tolerance: a crash at *every* write boundary then a resume gives the uninterrupted archive
bitwise; checksums turn lost or altered data into errors; stray flags and a deleted lock file are harmless."""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr.storage._local as zarr_local

from align_da_ops import archive as archive_module
from align_da_ops.archive import Archive, CycleRecord
from align_da_ops.errors import ArchiveCorruptError, ArchiveLockedError, ArchiveWriteError
from align_da_ops.grid import StateLayout, gaussian_latitudes, longitudes
from align_da_ops.times import CycleTime

from test_threedvar import make_obs

LAYOUT = StateLayout(upper_air=(), surface=("surface_pressure",), levels=())  # few arrays: fewer boundaries, same code paths
LAT, LON = gaussian_latitudes(4), longitudes(8)
LEADS = (6, 12)
MEMBERS = 2
FIRST = CycleTime.parse("2000-01-01T00")
CYCLES = [FIRST, CycleTime.parse("2000-01-01T06")]  # with growth blocks of 1 cycle, the second grows the time axis


class Crash(BaseException):
    """Stands for kill -9: not an Exception, so no handler of the code under test catches it."""


def record(cycle: CycleTime) -> CycleRecord:
    g = torch.Generator().manual_seed(int(cycle.compact))
    state = lambda: torch.randn(LAYOUT.n_channels, len(LAT), len(LON), generator=g)  # noqa: E731
    members = torch.stack([state() for _ in range(MEMBERS)])
    obs = make_obs([10.0, 20.0, -30.0], [5.0, 100.0, 200.0], ["surface_pressure"] * 3, [np.nan] * 3,
                   [1.0e5, 1.01e5, 0.99e5], [100.0] * 3)
    monitoring = pd.DataFrame({"departure": ["O-B", "O-A"], "rms": [1.5, 0.9], "n": [3, 3]})
    return CycleRecord(cycle, state(), members.mean(0), {lead: state() for lead in LEADS}, obs, np.arange(3.0), np.arange(3.0) + 0.5,
                       monitoring, {"cycle": cycle.value.isoformat()}, spread=members.std(0), members=members)


def new_archive(root) -> Archive:
    return Archive.create_or_open(root, "faults", LAYOUT, LAT, LON, LEADS, FIRST, members_stored=MEMBERS, ensemble=True)


def resume(root) -> Archive:
    archive = new_archive(root)
    for cycle in CYCLES:
        if not archive.is_done(cycle):
            archive.write_cycle(record(cycle))
    return archive


def snapshot(archive: Archive) -> dict:
    out = {}
    for product in ("background", "analysis", "spread", "forecast", "members"):
        ds = archive.open_product(product, dask=False).load()
        out |= {f"{product}/{name}": ds[name].values for name in ds.variables}
    for cycle in archive.done_cycles():
        flag = archive.provenance(cycle)
        flag.pop("wall_s")
        out[f"flag/{cycle.compact}"] = json.dumps(flag, sort_keys=True)
        out[f"obs/{cycle.compact}"] = archive.read_obs(cycle)[1]
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        elif isinstance(a[key], xr.Dataset):
            assert a[key].identical(b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture
def small_growth(monkeypatch):
    monkeypatch.setattr(archive_module, "GROW_CYCLES", 1)  # the second cycle grows the time axis


def count_boundaries(root, monkeypatch) -> int:
    """Write boundaries of a full run: every file the zarr store puts, every atomic rename, every group removal."""
    calls = []
    for module, name in ((zarr_local, "_put"), (os, "replace"), (shutil, "rmtree")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: (calls.append(1), _real(*a, **k))[1])
    resume(root)
    monkeypatch.undo()
    return len(calls)


def test_a_crash_at_every_write_boundary_resumes_to_the_uninterrupted_archive(tmp_path, small_growth, monkeypatch):
    reference = snapshot(resume(tmp_path / "reference"))
    n = count_boundaries(tmp_path / "counted", monkeypatch)
    monkeypatch.setattr(archive_module, "GROW_CYCLES", 1)
    assert n > 60  # templates, region writes, growth, obs files, flags
    for boundary in range(n):
        root = tmp_path / f"crash-{boundary}"
        seen = []

        def crash_before(real):
            def wrapped(*a, **k):
                seen.append(1)
                if len(seen) == boundary + 1:
                    raise Crash()
                return real(*a, **k)
            return wrapped

        with monkeypatch.context() as m:
            for module, name in ((zarr_local, "_put"), (os, "replace"), (shutil, "rmtree")):
                m.setattr(module, name, crash_before(getattr(module, name)))
            with pytest.raises(Crash):
                resume(root)
        assert_same(reference, snapshot(resume(root)))


def test_a_lost_chunk_is_an_error_not_nan(tmp_path):
    archive = resume(tmp_path / "a")
    chunk = next((archive.grid_store / "analysis" / "surface_pressure" / "c" / "1").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.unlink()
    with pytest.raises(ArchiveCorruptError, match="missing"):
        archive.read_state("analysis", CYCLES[1])
    assert any("analysis" in p for p in archive.verify(CYCLES[1]))
    assert archive.verify(CYCLES[0]) == []


def test_an_altered_obs_file_is_an_error(tmp_path):
    archive = resume(tmp_path / "a")
    for suffix in (".ioda.nc", ".monitoring.nc"):
        path = archive.root / "obs" / f"{CYCLES[0].compact}{suffix}"
        original = path.read_bytes()
        path.write_bytes(original[:-10] + b"0123456789")
        with pytest.raises(ArchiveCorruptError, match="checksum"):
            archive.read_obs(CYCLES[0])
        path.write_bytes(original)
    archive.read_obs(CYCLES[0])


def test_stray_and_empty_files_in_cycles_are_ignored(tmp_path):
    archive = resume(tmp_path / "a")
    (archive.root / "cycles" / "notes.json").write_text("{}")
    (archive.root / "cycles" / "2000010112.json").write_text("")  # zero bytes: not the engine's
    assert archive.done_cycles() == CYCLES
    assert not archive.is_done(CycleTime.parse("2000-01-01T12"))


def test_deleting_the_lock_file_does_not_let_a_second_engine_in(tmp_path):
    archive = resume(tmp_path / "a")
    other = Archive.open(archive.root)
    with archive.locked():
        (archive.root / ".lock").unlink()
        with pytest.raises(ArchiveLockedError, match="locked by another engine"):
            with other.locked():
                pass
    with other.locked():
        pass


def test_disk_full_is_a_clear_error_and_loses_nothing(tmp_path, monkeypatch):
    reference = snapshot(resume(tmp_path / "reference"))
    real, calls = zarr_local._put, []

    def full(*a, **k):
        calls.append(1)
        if len(calls) > 40:
            raise OSError(errno.ENOSPC, "No space left on device", str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(zarr_local, "_put", full)
    with pytest.raises(ArchiveWriteError, match="No space left on device.*not marked done"):
        resume(tmp_path / "full")
    monkeypatch.setattr(zarr_local, "_put", real)
    archive = new_archive(tmp_path / "full")
    assert all(not archive.verify(c) for c in archive.done_cycles())  # what is done is intact
    assert_same(reference, snapshot(resume(tmp_path / "full")))


def test_a_filesystem_without_flock_is_named(tmp_path, monkeypatch):
    import fcntl

    from align_da_ops.errors import ArchiveError

    archive = new_archive(tmp_path / "a")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ArchiveError, match="does not support flock"):
        with archive.locked():
            pass


def test_an_archive_begun_by_an_earlier_version_resumes_in_its_own_layout(tmp_path, monkeypatch):
    """Forecast lead stored as integer `lead` (before prediction_timedelta): the next cycle writes into it,
    and reading gives the WB2 view (prediction_timedelta, valid_time) over both cycles."""
    with monkeypatch.context() as m:  # the earlier layout
        m.setattr(archive_module, "LEAD", "lead")
        m.setattr(Archive, "_lead_values", lambda self: np.asarray(self.leads, dtype=np.int64))
        m.setattr(Archive, "open_product", lambda self, product, dask=True: xr.open_zarr(
            self.grid_store, group=product, consolidated=False, chunks=None if not dask else {}))
        old = new_archive(tmp_path / "a")
        old.write_cycle(record(CYCLES[0]))
    assert "lead" in xr.open_zarr(old.grid_store, group="forecast", consolidated=False).dims
    archive = resume(tmp_path / "a")
    forecast = archive.open_product("forecast")
    assert list(forecast["prediction_timedelta"].values) == [np.timedelta64(h, "h") for h in LEADS]
    for cycle in CYCLES:
        assert archive.verify(cycle) == []
        np.testing.assert_array_equal(archive.read_state("forecast", cycle, lead=12).numpy(),
                                      record(cycle).forecasts[12].numpy())
