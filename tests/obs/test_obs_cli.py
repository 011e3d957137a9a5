"""`align-da obs ingest`, `align-da obs simulate` and `align-da bench obs` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from align_da_ops.cli import app
from align_da_ops.errors import ObservationError
from align_da_ops.obs.batch import QCFlag
from align_da_ops.obs.ioda import read_ioda

BUFR = Path(__file__).resolve().parent.parent / "data" / "bufr"
runner = CliRunner()


@pytest.fixture(scope="module")
def truth_store(tmp_path_factory) -> Path:
    """A nature-run-shaped Zarr store (member, time, level, lat, lon) on T21's grid, random smooth-ish fields."""
    import torch
    import xarray as xr

    from align_da_ops.grid import StateLayout, gaussian_latitudes, longitudes

    layout = StateLayout(
        ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"),
        ("surface_pressure",),
        (200, 300, 500, 700, 850, 1000),
    )
    base = torch.as_tensor([5e4] * 6 + [250.0] * 6 + [10.0] * 6 + [0.0] * 6 + [1e5], dtype=torch.float32)[:, None, None]
    gen = torch.Generator().manual_seed(0)
    x = base + torch.randn((1, 8, layout.n_channels, 32, 64), generator=gen)
    times = np.datetime64("2000-01-01T00:00") + np.arange(8) * np.timedelta64(6, "h")
    ds = layout.from_tensor(
        x,
        gaussian_latitudes(32),
        longitudes(64),
        leading=("member", "time"),
        coords={"member": np.arange(1), "time": times},
    )
    path = tmp_path_factory.mktemp("truth") / "nature.zarr"
    ds.to_zarr(path, consolidated=False)
    assert isinstance(xr.open_zarr(path, consolidated=False), xr.Dataset)
    return path


def test_ingest_decodes_qcs_and_writes_ioda(tmp_path):
    out = tmp_path / "obs.nc"
    files = [BUFR / "eccodes_temp.bufr", BUFR / "pdbufr_obs_3day.bufr"]
    res = runner.invoke(
        app, ["obs", "ingest", *map(str, files), "-o", str(out), "--cycle", "2017-04-25T12:00", "--blacklist", "03105"]
    )
    assert res.exit_code == 0, res.output
    batch = read_ioda(out)
    assert len(batch) == 257 + 228
    synop = batch.select(batch.obs_type == "synop")
    assert (synop.qc[synop.station == "03105"] == QCFlag.BLACKLISTED).all()
    assert (batch.qc[batch.obs_type == "temp"] == QCFlag.OUTSIDE_WINDOW).all()  # 1979-2016 sondes
    assert synop.passed.sum() > 200
    for needle in ("eccodes_temp.bufr", "blacklisted=", "outside_window=257", f"wrote {out}"):
        assert needle in res.output, needle


def test_ingest_of_only_bad_files_is_an_observation_error(tmp_path):
    bad = tmp_path / "junk.bufr"
    bad.write_bytes(b"\x00" * 100)
    res = runner.invoke(app, ["obs", "ingest", str(bad), "-o", str(tmp_path / "o.nc")])
    assert isinstance(res.exception, ObservationError) and res.exception.exit_code == 3
    assert "unusable: no complete BUFR message" in res.output and not (tmp_path / "o.nc").exists()


def test_simulate_from_a_nature_run_store(truth_store, tmp_path):
    out = tmp_path / "syn.nc"
    args = [
        "obs",
        "simulate",
        str(truth_store),
        "-n",
        "random_mask",
        "-n",
        "stations",
        "-n",
        "swath",
        "--cycle",
        "2000-01-01T12:00",
        "-o",
        str(out),
        "--gross-error-rate",
        "0.02",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    batch = read_ioda(out)
    assert set(batch.obs_type) == {"grid", "synop", "temp", "swath"}
    assert round(0.01 * 32 * 64) * 25 == int((batch.obs_type == "grid").sum())
    assert np.all(np.abs(batch.time - np.datetime64("2000-01-01T12:00:00")) <= np.timedelta64(3, "h"))
    again = tmp_path / "again.nc"
    assert runner.invoke(app, [*args[:-4], "-o", str(again), "--gross-error-rate", "0.02"]).exit_code == 0
    assert read_ioda(again).equals(batch)  # seeded by (experiment, cycle, network)
    res = runner.invoke(app, ["obs", "simulate", str(truth_store), "-n", "bogus"])
    assert res.exit_code != 0 and "unknown network" in res.output


def test_simulate_rejects_a_cycle_outside_the_store(truth_store, tmp_path):
    res = runner.invoke(
        app, ["obs", "simulate", str(truth_store), "--cycle", "2001-01-01T00:00", "-o", str(tmp_path / "x.nc")]
    )
    assert isinstance(res.exception, ObservationError) and "outside the store" in str(res.exception)


def test_bench_obs_reports_decode_and_operator_throughput():
    res = runner.invoke(
        app, ["bench", "obs", str(BUFR / "eccodes_temp.bufr"), "--n-obs", "2000", "--nlat", "8", "--repeats", "1"]
    )
    assert res.exit_code == 0, res.output
    for needle in ("reports_per_s", "eccodes_temp.bufr", "observation operator H", "8x16x69", "cpu"):
        assert needle in res.output, needle


@pytest.mark.gpu
def test_bench_obs_on_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.fail("gpu-marked test run without CUDA")
    from align_da_ops.obs.bench import bench_operator

    rows = bench_operator(("cpu", "cuda"), n_obs=100_000, repeats=3)
    assert rows[1]["device"] == "cuda" and rows[1]["obs_per_s"] > 0
