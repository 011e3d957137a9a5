"""Nature run: schema, provenance, plausible climate, normalisation, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from align_da_ops import grid
from align_da_ops.data import nature_run as nr
from align_da_ops.data.plausibility import check_report, climate_report
from align_da_ops.data.sources import layout_of, read_normalization
from align_da_ops.errors import StoreError

from factories import tiny_config, tiny_config_dict


class Killed(Exception):
    pass


def test_schema_and_provenance(tiny_nature_run):
    ds = nr.open_nature_run(tiny_nature_run)
    assert set(ds.data_vars) == {"geopotential", "temperature", "u_component_of_wind", "v_component_of_wind", "surface_pressure"}
    assert ds["temperature"].dims == (grid.MEMBER, grid.TIME, grid.LEVEL, grid.LAT, grid.LON)
    assert ds["temperature"].shape == (1, 8, 13, 32, 64)
    assert ds["temperature"].dtype == np.float32
    assert list(ds[grid.LEVEL].values) == [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
    assert np.all(np.diff(ds[grid.LAT].values) > 0)
    times = pd.DatetimeIndex(ds[grid.TIME].values)
    assert (times == pd.date_range("2000-01-01", periods=8, freq="6h")).all()
    for key in ("source", "dinosaur_torch_version", "truncation", "sigma_layers", "dt_minutes", "seed", "spinup", "config_hash"):
        assert key in ds.attrs, key
    assert ds.attrs["complete"] == 1 and ds.attrs["truncation"] == "T21"


def test_climate_is_plausible(tiny_nature_run):
    report = climate_report(nr.open_nature_run(tiny_nature_run))
    assert check_report(report) == [], report
    assert 20 <= report["jet_max_north_ms"] <= 40 and 20 <= report["jet_max_south_ms"] <= 40
    assert report["eke_m2s2"] > 1.0 and report["nan_count"] == 0


def test_hydrostatic_ordering_of_geopotential(tiny_nature_run):
    z = nr.open_nature_run(tiny_nature_run)["geopotential"].values
    assert np.all(np.diff(z, axis=2) < 0)  # levels go 200 -> 1000 hPa: z decreases


def test_normalisation_matches_training_split(tiny_nature_run):
    cfg = tiny_config(tiny_nature_run)
    stats = read_normalization(tiny_nature_run)
    ds = nr.open_nature_run(tiny_nature_run).sel(time=slice(cfg.splits.train.start, cfg.splits.train.end)).load()
    layout = layout_of(cfg)
    x, _ = layout.to_tensor(ds)
    assert stats.channels == layout.channels
    flat = x.movedim(-3, 0).reshape(layout.n_channels, -1).double()
    np.testing.assert_allclose(stats.mean, flat.mean(1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(stats.std, flat.std(1, correction=0).numpy(), rtol=1e-5)


def _assert_same_store(a, b):
    da, db = nr.open_nature_run(a).load(), nr.open_nature_run(b).load()
    assert (da[grid.TIME].values == db[grid.TIME].values).all()
    for name in da.data_vars:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)


def test_resume_after_interruptions_equals_uninterrupted(tiny_nature_run, tmp_path):
    cfg = tiny_config(tmp_path / "resumed.zarr")

    def die_before_commit(done):
        if done == 4:  # data of the 2nd chunk written, its progress not recorded
            raise Killed

    with pytest.raises(Killed):
        nr.generate(cfg, before_commit=die_before_commit)
    assert not nr.open_nature_run(tmp_path / "resumed.zarr").attrs["complete"]

    def die_after_commit(done, total):
        if done == 6:
            raise Killed

    with pytest.raises(Killed):
        nr.generate(cfg, on_chunk=die_after_commit)
    seen = []
    nr.generate(cfg, on_chunk=lambda done, total: seen.append(done))
    assert seen == [8]  # resumed at the first unrecorded time: no chunk redone twice, none skipped
    _assert_same_store(tiny_nature_run, tmp_path / "resumed.zarr")


def test_kill_9_mid_run_then_resume(tiny_nature_run, tmp_path):
    raw = tiny_config_dict(tmp_path / "killed.zarr", chunk_days=0.25)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cmd = [sys.executable, "-m", "align_da_ops.cli", "nature-run", str(cfg_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = nr.progress_file(tmp_path / "killed.zarr")
    deadline = time.time() + 120
    while not progress.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert progress.exists()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_store(tiny_nature_run, tmp_path / "killed.zarr")


def test_store_of_another_config_is_refused(tiny_nature_run, tmp_path):
    raw = tiny_config_dict(tiny_nature_run)
    raw["nature_run"]["seed"] = 99
    from align_da_ops.config import ExperimentConfig

    before = nr.open_nature_run(tiny_nature_run)["temperature"].values.copy()
    with pytest.raises(StoreError, match="different nature-run config"):
        nr.generate(ExperimentConfig.model_validate(raw))
    np.testing.assert_array_equal(nr.open_nature_run(tiny_nature_run)["temperature"].values, before)


def test_unreadable_existing_output_is_refused_and_kept(tmp_path):
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "notes.txt").write_text("precious")
    with pytest.raises(StoreError, match="not a readable nature-run store"):
        nr.generate(tiny_config(junk))
    assert (junk / "notes.txt").read_text() == "precious"


def test_members_are_batched_and_distinct(tiny_nature_run, tmp_path):
    cfg = tiny_config(tmp_path / "members.zarr", days=1.0, members=3)
    ds = nr.open_nature_run(nr.generate(cfg))
    single = nr.open_nature_run(tiny_nature_run).isel(time=slice(0, 4))
    t = ds["temperature"].values
    assert t.shape[0] == 3
    # member 0 is the unperturbed trajectory (batching changes only round-off)
    np.testing.assert_allclose(t[0], single["temperature"].values[0], atol=1e-2)
    assert np.abs(t[1] - t[0]).max() > 0.1 and np.abs(t[2] - t[1]).max() > 0.1


def test_pressure_level_fields_match_sigma_fields_at_a_sigma_level():
    """Interpolating to pressure σ_k·p_s of a column returns that sigma level's value."""
    from align_da_ops.data.dycore import CoreSpec, HeldSuarezCore
    from align_da_ops.vertical import interp_log_pressure

    core = HeldSuarezCore(CoreSpec(21, 8), dt_minutes=60)
    state = core.advance(core.rest_state(seed=1), 2)
    f = core.sigma_fields(state)
    column = f["pressure"][0, :, 5, 7]
    out = interp_log_pressure(f["t"][0, :, 5:6, 7:8], f["pressure"][0, :, 5:6, 7:8], column, dim=0)
    torch.testing.assert_close(out[:, 0, 0], f["t"][0, :, 5, 7], rtol=1e-5, atol=1e-3)
