"""CLI: inspect (summary + PNG), nature-run end to end, bench, and error exit codes."""

from __future__ import annotations

import subprocess
import sys

import yaml
from typer.testing import CliRunner

from align_da_ops.cli import app

from factories import tiny_config_dict

runner = CliRunner()


def _run(*args):
    return subprocess.run([sys.executable, "-m", "align_da_ops.cli", *map(str, args)], capture_output=True, text=True)


def test_inspect_nature_run_summary_and_png(tiny_nature_run, tmp_path):
    png = tmp_path / "z500.png"
    res = runner.invoke(app, ["inspect", str(tiny_nature_run), "--var", "geopotential", "--level", "500", "--time", "-1", "--png", str(png)])
    assert res.exit_code == 0, res.output
    for needle in ("temperature", "levels (hPa): [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]", "times: 8 from 2000-01-01T00:00:00", "T21"):
        assert needle in res.output, needle
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_inspect_grib(era5_grib, tmp_path):
    png = tmp_path / "t850.png"
    res = runner.invoke(app, ["inspect", str(era5_grib), "--var", "temperature", "--level", "850", "--member", "3", "--png", str(png)])
    assert res.exit_code == 0, res.output
    assert "grid: 61 x 120" in res.output and png.exists()


def test_inspect_errors_have_exit_codes(tiny_nature_run, tmp_path):
    missing = _run("inspect", tmp_path / "nothing.zarr")
    assert missing.returncode == 3 and "does not exist" in missing.stderr
    bad_var = _run("inspect", tiny_nature_run, "--var", "vorticity", "--png", tmp_path / "x.png")
    assert bad_var.returncode == 4 and "no variable 'vorticity'" in bad_var.stderr
    bad_level = _run("inspect", tiny_nature_run, "--var", "temperature", "--level", "875", "--png", tmp_path / "x.png")
    assert bad_level.returncode == 4 and "[50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]" in bad_level.stderr
    assert not (tmp_path / "x.png").exists()


def test_nature_run_command_end_to_end(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "nr.zarr", days=1.0), sort_keys=False))
    res = _run("nature-run", cfg)
    assert res.returncode == 0, res.stderr
    assert "jet_max_north_ms" in res.stdout and "warning" not in res.stdout
    assert (tmp_path / "nr.zarr" / "zarr.json").exists()
    again = _run("nature-run", cfg)  # already complete: nothing to do, same answer
    assert again.returncode == 0 and "jet_max_north_ms" in again.stdout


def test_spinup_command_writes_a_loadable_restart(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    raw = tiny_config_dict(tmp_path / "nr.zarr", days=1.0)
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "restart.npz"
    res = runner.invoke(app, ["spinup", str(cfg), "--output", str(out), "--days", "1"])
    assert res.exit_code == 0, res.output
    from align_da_ops.data.dycore import CoreSpec, HeldSuarezCore
    from align_da_ops.data.restarts import load_restart

    _, meta = load_restart(out, HeldSuarezCore(CoreSpec(21, 8), dt_minutes=60))
    assert meta["spinup_days"] == 1.0


def test_bench_nature_run_prints_a_table():
    res = runner.invoke(app, ["bench", "nature-run", "--truncations", "21", "--hours", "6"])
    assert res.exit_code == 0, res.output
    assert "T21 L8" in res.output and "s / 6 h" in res.output


def test_train_forecast_command_shows_epochs_and_writes_a_checkpoint(tiny_nature_run, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    target = tmp_path / "forecast.pt"
    res = runner.invoke(app, ["--threads", "1", "train", "forecast", str(config), "--epochs", "1", "--width", "8", "--blocks", "1",
                              "--rollout-steps", "1", "--batch-size", "4", "-o", str(target)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "wrote" in res.output and "1 epochs" in res.output and target.stat().st_size > 0
