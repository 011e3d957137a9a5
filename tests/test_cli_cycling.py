"""CLI for operations: replay with resume, one cycle, inspect an archive (scores + PNGs), lock exit code."""

from __future__ import annotations

import subprocess
import sys

import yaml
from typer.testing import CliRunner

from align_da_ops.archive import Archive
from align_da_ops.cli import app

from factories import tiny_config_dict

runner = CliRunner()


def _campaign(tmp_path, tiny_nature_run) -> tuple:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    campaign = {
        "name": "cli-test",
        "config": str(config),
        "start": "2000-01-02T00:00:00",
        "end": "2000-01-02T12:00:00",
        "observations": {"networks": [{"kind": "stations", "max_stations": 100}]},
        "analysis": {"kind": "threedvar", "max_iterations": 30},
        "forecast_model": {"kind": "persistence"},
        "cold_start": {"kind": "truth_offset", "offset_days": 1},
        "leads_hours": [6, 12],
        "archive": str(tmp_path / "archive"),
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign))
    return path, tmp_path / "archive"


def test_replay_resume_cycle_and_inspect(tiny_nature_run, tmp_path):
    campaign, archive = _campaign(tmp_path, tiny_nature_run)
    first = runner.invoke(app, ["replay", str(campaign), "--end", "2000-01-02T06"])
    assert first.exit_code == 0, first.output
    assert "2 cycles run, 0 already done" in first.output
    again = runner.invoke(app, ["replay", str(campaign)])  # resumes at the first cycle not done
    assert again.exit_code == 0 and "1 cycles run, 2 already done" in again.output
    one = runner.invoke(app, ["cycle", str(campaign), "--at", "2000010212"])
    assert one.exit_code == 0 and "skipped" in one.output
    forced = runner.invoke(app, ["cycle", str(campaign), "--at", "2000010212", "--force"])
    assert forced.exit_code == 0 and ": done" in forced.output
    pngs = tmp_path / "pngs"
    shown = runner.invoke(app, ["inspect", str(archive), "--png", str(pngs)])
    assert shown.exit_code == 0, shown.output
    for needle in ("3 cycles done", "WRMSE against truth", "analysis", "+6 h", "O-B", "O-A"):
        assert needle in shown.output, needle
    names = {p.name for p in pngs.iterdir()}
    assert names == {"analysis.png", "increment.png", "error.png", "background_error.png", "rmse_timeseries.png",
                     "departure_histograms.png"}
    assert all(p.stat().st_size > 0 for p in pngs.iterdir())


def test_locked_archive_gives_exit_code_10_and_predecessor_not_done_7(tiny_nature_run, tmp_path):
    campaign, archive = _campaign(tmp_path, tiny_nature_run)
    runner.invoke(app, ["replay", str(campaign), "--end", "2000-01-02T00"])
    with Archive.open(archive).locked():
        proc = subprocess.run([sys.executable, "-m", "align_da_ops.cli", "replay", str(campaign)], capture_output=True, text=True)
    assert proc.returncode == 10 and "locked by another engine" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "align_da_ops.cli", "cycle", str(campaign), "--at", "2000010212"],
                          capture_output=True, text=True)
    assert proc.returncode == 7 and "not done; run cycles in order" in proc.stderr


def test_archive_verify_finds_a_lost_chunk(tiny_nature_run, tmp_path):
    campaign, archive = _campaign(tmp_path, tiny_nature_run)
    assert runner.invoke(app, ["replay", str(campaign), "--end", "2000-01-02T06"]).exit_code == 0
    ok = runner.invoke(app, ["archive", "verify", str(archive)])
    assert ok.exit_code == 0 and "2 done cycles, 0 damaged" in ok.output
    chunk = archive / "grid.zarr" / "forecast" / "temperature" / "c" / "1"
    for path in sorted(chunk.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    proc = subprocess.run([sys.executable, "-m", "align_da_ops.cli", "archive", "verify", str(archive)], capture_output=True, text=True)
    assert proc.returncode == 11 and "2000-01-02T06Z" in proc.stdout and "'forecast' of done cycle" in proc.stdout
    resumed = subprocess.run([sys.executable, "-m", "align_da_ops.cli", "replay", str(campaign)], capture_output=True, text=True)
    assert resumed.returncode == 11 and "missing (NaN)" in resumed.stderr  # the next background is refused, not NaN


def test_version_and_validate_recognise_every_config_kind(tiny_nature_run, tmp_path):
    import align_da_ops

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and align_da_ops.__version__ in version.output
    campaign, _ = _campaign(tmp_path, tiny_nature_run)
    result = runner.invoke(app, ["config", "validate", str(campaign), "cycles/tiny.suite.yaml", "config/tiny.yaml"])
    assert result.exit_code == 0, result.output
    assert "campaign cli-test" in result.output and "suite tiny" in result.output and "experiment tiny" in result.output


def test_bench_cycling_runs_and_scores_only_the_period_asked(tiny_nature_run, tmp_path):
    campaign, archive = _campaign(tmp_path, tiny_nature_run)
    result = runner.invoke(app, ["bench", "cycling", str(campaign), "--end", "2000-01-02T06"])
    assert result.exit_code == 0, result.output
    done = Archive.open(archive).done_cycles()
    assert [str(c) for c in done] == ["2000-01-02T00Z", "2000-01-02T06Z"]  # not the campaign's whole period
    assert "z500" in result.output and "g500" not in result.output
    later = runner.invoke(app, ["bench", "cycling", str(campaign), "--start", "2000-01-02T12", "--end", "2000-01-02T12"])
    assert later.exit_code == 0, later.output
    assert len(Archive.open(archive).done_cycles()) == 3  # predecessors reused, the asked cycle added


def test_usage_errors_exit_2_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "align_da_ops.cli", "replay", "--bogus"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "No such option" in result.stderr
