"""Continuous service: what is due comes from the archive; catch-up after downtime; accelerated clock."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml

from align_da_ops.campaign import CampaignConfig, load_campaign
from align_da_ops.errors import ConfigError
from align_da_ops.scheduler import Clock, catch_up, due_cycles, serve
from align_da_ops.times import CycleTime, cycle_range
from align_da_ops.wiring import build_context

from factories import REPO, tiny_config, tiny_config_dict

START = CycleTime.parse("2000-01-02T00")


def _ctx(tiny_nature_run, tmp_path, **kw):
    raw = {
        "name": "service-test",
        "config": "unused.yaml",
        "mode": "continuous",
        "start": START.value.isoformat(),
        "observations": {"networks": [{"kind": "stations", "max_stations": 50}]},
        "analysis": {"kind": "background_only"},
        "forecast_model": {"kind": "persistence"},
        "cold_start": {"kind": "truth_offset", "offset_days": 1},
        "leads_hours": [6],
        "archive": str(tmp_path / "archive"),
        "cutoff": "PT1H",
    }
    raw.update(kw)
    return build_context(CampaignConfig.model_validate(raw), tiny_config(tiny_nature_run))


def test_due_cycles_respect_cutoff_and_archive(tiny_nature_run, tmp_path):
    ctx = _ctx(tiny_nature_run, tmp_path)
    assert due_cycles(ctx.campaign, ctx.archive, datetime(2000, 1, 2, 0, 59)) == []  # before the cut-off
    assert due_cycles(ctx.campaign, ctx.archive, datetime(2000, 1, 2, 7, 0)) == [START, START.next]
    catch_up(ctx, datetime(2000, 1, 2, 1, 0))
    assert ctx.archive.done_cycles() == [START]
    # downtime: three cycles missed, caught up in order from the archive's state
    assert due_cycles(ctx.campaign, ctx.archive, datetime(2000, 1, 2, 19, 30)) == cycle_range(START.next, CycleTime.parse("2000-01-02T18"))
    outcomes = catch_up(ctx, datetime(2000, 1, 2, 19, 30))
    assert [o.status for o in outcomes] == ["done"] * 3
    assert ctx.archive.done_cycles() == cycle_range(START, CycleTime.parse("2000-01-02T18"))


def test_due_cycles_stop_at_campaign_end(tiny_nature_run, tmp_path):
    ctx = _ctx(tiny_nature_run, tmp_path, end="2000-01-02T06:00:00")
    assert due_cycles(ctx.campaign, ctx.archive, datetime(2000, 1, 5)) == [START, START.next]


def test_accelerated_service_runs_and_stops(tiny_nature_run, tmp_path):
    ctx = _ctx(tiny_nature_run, tmp_path, end="2000-01-02T12:00:00")
    # 1 wall second = 12 simulated hours, starting just after the first cut-off
    clock = Clock(factor=12 * 3600, origin=datetime(2000, 1, 2, 1, 0))
    ran = serve(ctx, clock, tick_seconds=0.5, max_ticks=3)
    assert ran == 3 and ctx.archive.done_cycles() == cycle_range(START, CycleTime.parse("2000-01-02T12"))


def test_clock_real_time_is_utc_now():
    now = Clock().now()
    assert abs((now - datetime.now(timezone.utc).replace(tzinfo=None)).total_seconds()) < 5


def test_campaign_validation(tmp_path):
    base = yaml.safe_load((REPO / "cycles" / "tiny-3dvar.yaml").read_text())
    for mutate, needle in (
        (lambda r: r.pop("end"), "replay campaign needs an end"),
        (lambda r: r.update(leads_hours=[12, 24]), "including 6"),
        (lambda r: r.update(start="2000-01-01T03:00:00"), "6-hourly grid"),
        (lambda r: r.update(cutoff="PT7H"), "under 6 h"),
        (lambda r: r.update(analysis={"kind": "4dvar"}), "analysis"),
    ):
        raw = dict(base)
        mutate(raw)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=needle):
            load_campaign(path)


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "cycles").glob("*.yaml") if not p.name.endswith(".suite.yaml")),
                         ids=lambda p: p.name)
def test_shipped_campaigns_validate(path, monkeypatch):
    monkeypatch.chdir(REPO)
    campaign, experiment = load_campaign(path)
    assert campaign.archive and experiment.name


@pytest.mark.parametrize("path", sorted((REPO / "cycles").glob("*.suite.yaml")), ids=lambda p: p.name)
def test_shipped_suites_validate_and_expand(path, monkeypatch):
    from align_da_ops.suite import load_suite, scoring_runs

    monkeypatch.chdir(REPO)
    suite, experiment = load_suite(path)
    runs = scoring_runs(suite, experiment)
    assert len(runs) == len(suite.methods) * len(suite.networks) * len(suite.seeds)
    assert all(r.campaign.analysis.kind == m.analysis.kind for m in suite.methods for r in runs if r.method == m.name)


def test_sigterm_finishes_the_cycle_in_flight_and_stops(tiny_nature_run, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from align_da_ops.archive import Archive

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    raw = {
        "name": "sigterm-test", "config": str(config), "mode": "continuous", "start": START.value.isoformat(),
        "observations": {"networks": [{"kind": "stations", "max_stations": 50}]},
        "analysis": {"kind": "background_only"}, "forecast_model": {"kind": "dynamical_core"},
        "cold_start": {"kind": "truth_offset", "offset_days": 1}, "leads_hours": [6], "archive": str(tmp_path / "archive"),
    }
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "align_da_ops.cli", "serve", str(campaign), "--accelerate", "43200",
           "--origin", "2000-01-02T01:00", "--tick", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flags = tmp_path / "archive" / "cycles"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (flags.exists() and any(flags.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "service stopped after" in stdout
    done = Archive.open(tmp_path / "archive").done_cycles()
    assert done and done == cycle_range(START, done[-1])  # a contiguous prefix, nothing half-done
    assert not list(flags.glob("*.tmp"))


def test_a_busy_service_logs_one_still_running_line_all_in_json(tiny_nature_run, tmp_path, monkeypatch, capsys):
    import json
    import time

    from align_da_ops import logs, scheduler

    ctx = _ctx(tiny_nature_run, tmp_path, end="2000-01-02T06:00:00")
    real = scheduler.run_cycle

    def slow(ctx, cycle, force=False):
        time.sleep(0.6)  # triggers every 0.1 s fire while the cycle runs
        return real(ctx, cycle, force)

    monkeypatch.setattr(scheduler, "run_cycle", slow)
    logs.configure("json")
    try:
        capsys.readouterr()
        serve(ctx, Clock(factor=12 * 3600, origin=datetime(2000, 1, 2, 1, 0)), tick_seconds=0.1, max_ticks=2)
        err = capsys.readouterr().err
    finally:
        logs.configure()
    events = [json.loads(line)["event"] for line in err.splitlines() if line.strip()]  # every line is one JSON object
    assert "maximum number of running instances" not in err
    assert 1 <= events.count("cycle_still_running") <= 2 and events.count("cycle_done") == 2


def test_foreign_library_warnings_are_rendered_as_json(capsys):
    import json
    import logging

    from align_da_ops import logs

    logs.configure("json")
    try:
        logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed by %s", "tick", "0:00:02")
        logging.getLogger("apscheduler.scheduler").warning("Execution of job x skipped: maximum number of running instances reached (1)")
        logging.getLogger("apscheduler.scheduler").info("Added job tick")  # below WARNING: not shown
        err = capsys.readouterr().err
    finally:
        logs.configure()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert len(records) == 1 and records[0]["event"] == "Run time of job tick was missed by 0:00:02"
    assert records[0]["level"] == "warning" and records[0]["logger"] == "apscheduler.scheduler" and "timestamp" in records[0]
