"""`align-da status` (states, gaps, lag, health exit codes, per-cycle O−B/O−A), failure records,
`--set` overrides and `--dry-run`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from align_da_ops import engine
from align_da_ops.archive import Archive
from align_da_ops.cli import app
from align_da_ops.config import apply_overrides
from align_da_ops.errors import ConfigError, CycleFailedError
from align_da_ops.cycle_status import Expectation, campaign_status
from align_da_ops.times import CycleTime

from factories import tiny_config_dict

runner = CliRunner()
T0 = CycleTime.parse("2000-01-02T00")


def _campaign(tmp_path, tiny_nature_run, **extra) -> tuple:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    campaign = {
        "name": "status-test", "config": str(config), "start": "2000-01-02T00:00:00", "end": "2000-01-02T12:00:00",
        "observations": {"networks": [{"kind": "stations", "max_stations": 100}]},
        "analysis": {"kind": "threedvar", "max_iterations": 30}, "forecast_model": {"kind": "persistence"},
        "cold_start": {"kind": "truth_offset", "offset_days": 1}, "leads_hours": [6], "archive": str(tmp_path / "archive"),
        **extra,
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(campaign))
    return path, tmp_path / "archive"


def _status(target, *args) -> tuple[int, dict]:
    res = runner.invoke(app, ["status", str(target), "--json", *args])
    return res.exit_code, json.loads(res.output)


def test_status_follows_a_campaign_through_failure_and_recovery(tiny_nature_run, tmp_path, monkeypatch):
    campaign, archive_dir = _campaign(tmp_path, tiny_nature_run)
    code, report = _status(campaign)  # nothing run yet: no archive, every cycle pending
    assert code == 13 and report["health"] == "behind" and report["counts"]["pending"] == 3 and report["archive"] is None
    assert runner.invoke(app, ["replay", str(campaign), "--end", "2000-01-02T06"]).exit_code == 0
    code, report = _status(campaign)
    assert code == 13 and report["counts"] == {"done": 2, "fallback": 0, "failed": 0, "pending": 1}
    assert report["last_done"] == "2000-01-02T06Z" and report["gaps"] == []

    # per-cycle O−B Jo/n and RMS equal numpy's over the archived used observations
    archive = Archive.open(archive_dir)
    batch, ds, _ = archive.read_obs(T0.next)
    row = next(r for r in report["cycles"] if r["cycle"] == str(T0.next))
    use = batch.passed & np.isfinite(ds["hofx_background"].values)
    d = (batch.value - ds["hofx_background"].values)[use]
    assert row["omb_count"] == use.sum() == row["n_obs_used"]
    assert row["omb_jo_per_n"] == pytest.approx(np.mean((d / batch.error[use]) ** 2), rel=1e-5)
    t = batch.variable[use] == "temperature"
    assert row["omb_rms"]["temperature"] == pytest.approx(np.sqrt(np.mean(d[t] ** 2)), rel=1e-5)
    assert row["oma_jo_per_n"] < row["omb_jo_per_n"]

    # a failing cycle is recorded; status says failing (exit 14) and names the error
    def broken(ctx, cycle, force):
        raise CycleFailedError(f"cycle {cycle}: analysis has NaN")

    monkeypatch.setattr(engine, "_run_cycle", broken)
    failed = runner.invoke(app, ["cycle", str(campaign), "--at", "2000-01-02T12"])
    assert isinstance(failed.exception, CycleFailedError)  # `main` maps it to exit code 8
    code, report = _status(campaign)
    assert code == 14 and report["health"] == "failing" and report["counts"]["failed"] == 1
    assert report["failures"][0]["cycle"] == "2000-01-02T12Z" and report["failures"][0]["exit_code"] == 8
    assert "analysis has NaN" in report["failures"][0]["message"]
    text = runner.invoke(app, ["status", str(archive_dir)])  # the archive alone finds its campaign file
    assert text.exit_code == 14 and "failing" in text.output and "analysis has NaN" in text.output

    monkeypatch.undo()
    assert runner.invoke(app, ["replay", str(campaign)]).exit_code == 0
    code, report = _status(campaign)
    assert code == 0 and report["health"] == "healthy" and report["failures"] == []
    assert not list((archive_dir / "failures").glob("*.json"))  # the record went with the completed cycle


class FakeArchive:
    """Done flags and failure records only: what `campaign_status` reads."""

    def __init__(self, flags: dict, failures: dict | None = None):
        self.root, self._flags, self._failures = "fake", flags, failures or {}

    def done_cycles(self):
        return sorted(self._flags)

    def provenance(self, cycle):
        return self._flags[cycle]

    def failures(self):
        return self._failures


def _flag(fallback=False):
    departures = {"omb_count": 1, "omb_jo_per_n": 2.0, "omb_rms": {"temperature": 1.0}}
    return {"departures": departures, "wall_s": {"analysis": 0.5}, "n_obs_used": 1,
            **({"fallback": "background", "fallback_reason": "NaN in members"} if fallback else {})}


def test_gaps_and_lag_behind_the_clock():
    done = [T0, T0.next, T0 + timedelta(hours=24)]  # 12Z and 18Z missing
    expect = Expectation("demo", T0, None, timedelta(hours=1), continuous=True)
    report = campaign_status(FakeArchive({c: _flag() for c in done}), expect, now=datetime(2000, 1, 3, 19, 0))
    assert report["gaps"] == [{"from": "2000-01-02T12Z", "to": "2000-01-02T18Z", "cycles": 2}]
    assert report["latest_due"] == "2000-01-03T18Z" and report["lag_hours"] == 18.0  # 3 cycles after the last done
    assert report["health"] == "behind" and report["exit_code"] == 13
    assert report["counts"] == {"done": 3, "fallback": 0, "failed": 0, "pending": 5}
    on_time = campaign_status(FakeArchive({c: _flag() for c in done}), expect, now=datetime(2000, 1, 3, 0, 30))
    assert on_time["latest_due"] == "2000-01-02T18Z"  # 00Z is not past its cut-off yet


def test_a_run_of_fallbacks_is_failing():
    cycles = [T0 + timedelta(hours=6 * i) for i in range(4)]
    expect = Expectation("demo", T0, cycles[-1], timedelta(hours=1), continuous=False)
    flags = {c: _flag(fallback=i > 0) for i, c in enumerate(cycles)}
    report = campaign_status(FakeArchive(flags), expect)
    assert report["health"] == "failing" and report["exit_code"] == 14
    assert [f["reason"] for f in report["fallbacks"]] == ["NaN in members"] * 3
    flags[cycles[1]] = _flag()
    flags[cycles[-1]] = _flag()
    assert campaign_status(FakeArchive(flags), expect)["health"] == "healthy"


def test_overrides_set_nested_values_parsed_as_yaml():
    raw = {"analysis": {"kind": "letkf", "members": 20}, "name": "x"}
    out = apply_overrides(raw, ["analysis.members=8", "analysis.rtps=0.25", "observations.networks=[{kind: stations}]"])
    assert out["analysis"] == {"kind": "letkf", "members": 8, "rtps": 0.25}
    assert out["observations"] == {"networks": [{"kind": "stations"}]} and raw["analysis"]["members"] == 20
    for bad, needle in (("analysis.members", "key.sub=value"), ("=3", "key.sub=value"), ("name.first=a", "name is not a mapping"),
                        ("a=[1", "not YAML")):
        with pytest.raises(ConfigError, match=needle):
            apply_overrides(raw, [bad])


def test_set_and_dry_run_on_the_command_line(tiny_nature_run, tmp_path):
    campaign, archive_dir = _campaign(tmp_path, tiny_nature_run)
    plan = runner.invoke(app, ["replay", str(campaign), "--dry-run"])
    assert plan.exit_code == 0 and "3 cycles would run" in plan.output and not archive_dir.exists()
    bad = runner.invoke(app, ["replay", str(campaign), "--set", "analysis.max_iteration=5", "--dry-run"])
    assert isinstance(bad.exception, ConfigError) and "max_iteration" in str(bad.exception)
    ran = runner.invoke(app, ["replay", str(campaign), "--end", "2000-01-02T00", "--set", "analysis.max_iterations=3",
                              "--set", "experiment.device=cpu"])
    assert ran.exit_code == 0, ran.output
    assert Archive.open(archive_dir).provenance(T0)["overrides"] == ["analysis.max_iterations=3", "experiment.device=cpu"]
    plan = runner.invoke(app, ["replay", str(campaign), "--dry-run"])
    assert "2 cycles would run" in plan.output and "(1 already done)" in plan.output
    due = runner.invoke(app, ["serve", str(campaign), "--dry-run", "--accelerate", "2", "--origin", "2000-01-02T07:30"])
    assert due.exit_code == 0 and "1 cycles would run" in due.output and "2000-01-02T06Z" in due.output
