"""Cycle engine: archive contents, idempotence, restart after crashes (bitwise), lock, odd states."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from align_da_ops.analysis.base import AnalysisResult
from align_da_ops.archive import Archive
from align_da_ops.campaign import CampaignConfig
from align_da_ops.engine import run_cycle
from align_da_ops.errors import ArchiveError, CycleFailedError
from align_da_ops.replaying import replay
from align_da_ops.times import CycleTime
from align_da_ops.wiring import build_context

from factories import tiny_config, tiny_config_dict

START = CycleTime.parse("2000-01-02T00")
END = CycleTime.parse("2000-01-02T06")


def campaign_dict(archive: Path, config: Path, **kw) -> dict:
    raw = {
        "name": "engine-test",
        "config": str(config),
        "start": START.value.isoformat(),
        "end": END.value.isoformat(),
        "observations": {"networks": [{"kind": "stations", "max_stations": 200}]},
        "analysis": {"kind": "threedvar", "max_iterations": 50},
        "cold_start": {"kind": "truth_offset", "offset_days": 1},
        "leads_hours": [6, 24],
        "archive": str(archive),
    }
    raw.update(kw)
    return raw


@pytest.fixture(scope="module")
def world(tiny_nature_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    return root, config, tiny_config(tiny_nature_run)


def make_ctx(world, archive_name: str, **kw):
    root, config, experiment = world
    campaign = CampaignConfig.model_validate(campaign_dict(root / archive_name, config, **kw))
    return build_context(campaign, experiment)


@pytest.fixture(scope="module")
def reference(world):
    """An uninterrupted two-cycle 3D-Var replay."""
    ctx = make_ctx(world, "reference")
    outcomes = replay(ctx, START, END)
    assert [o.status for o in outcomes] == ["done", "done"]
    return ctx.archive


def assert_same_archive(a: Archive, b: Archive) -> None:
    assert a.done_cycles() == b.done_cycles()
    for product in ("background", "analysis", "forecast"):
        da, db = a.open_product(product).load(), b.open_product(product).load()
        for name in da.data_vars:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=f"{product}/{name}")
    for cycle in a.done_cycles():
        oa, fa, _ = a.read_obs(cycle)
        ob, fb, _ = b.read_obs(cycle)
        assert oa.equals(ob)
        np.testing.assert_array_equal(fa["hofx_analysis"].values, fb["hofx_analysis"].values)


def test_archive_holds_everything(reference):
    first, second = reference.done_cycles()
    x_b = reference.read_state("background", second)
    np.testing.assert_array_equal(x_b.numpy(), reference.read_state("forecast", first, lead=6).numpy())
    prov = reference.provenance(second)
    for key in ("config_hash", "campaign_hash", "code_version", "seed", "wall_s", "qc_counts", "checkpoints"):
        assert key in prov, key
    assert prov["checkpoints"]["covariance_hash"] and prov["cold_start"] is False
    assert set(prov["wall_s"]) >= {"background", "observations", "qc", "analysis", "forecast", "archive"}
    batch, table, monitoring = reference.read_obs(second)
    assert len(batch) == len(table["hofx_background"]) and batch.passed.sum() > 100
    rms = monitoring.set_index(["departure", "obs_type", "variable", "level_band"])["rms"]
    assert (rms["O-A"] < rms["O-B"]).all()  # the analysis fits the observations better than the background
    lazy = reference.open_product("forecast")
    assert lazy["temperature"].chunks is not None and list(lazy.prediction_timedelta.values) == [np.timedelta64(h, "h") for h in (6, 24)]
    assert (lazy["valid_time"] == lazy["time"] + lazy["prediction_timedelta"]).all()


def test_done_cycles_are_skipped_and_never_rewritten(reference, world):
    ctx = make_ctx(world, "reference")
    assert [o.status for o in replay(ctx, START, END)] == ["skipped", "skipped"]
    before = reference.open_product("analysis")["temperature"].values.copy()
    with pytest.raises(ArchiveError, match="already done"):
        ctx.archive.write_cycle(_record_like(ctx, START))
    np.testing.assert_array_equal(reference.open_product("analysis")["temperature"].values, before)


def _record_like(ctx, cycle):
    from align_da_ops.archive import CycleRecord
    from align_da_ops.obs.batch import ObsBatch

    zero = torch.zeros(ctx.layout.n_channels, len(ctx.latitudes), len(ctx.longitudes))
    return CycleRecord(cycle, zero, zero, {6: zero, 24: zero}, ObsBatch.empty(), np.zeros(0), np.zeros(0),
                       __import__("pandas").DataFrame(), {})


def test_force_redo_is_bitwise_identical(reference, world, tmp_path):
    ctx = make_ctx(world, "forced")
    replay(ctx, START, END)
    replay(ctx, START, END, force=True)
    assert_same_archive(reference, ctx.archive)


def test_crash_mid_archive_write_then_resume(reference, world, monkeypatch):
    ctx = make_ctx(world, "crashed")
    original = Archive._write_obs

    def boom(self, record):
        if record.cycle == END:
            raise KeyboardInterrupt  # gridded products already written, no done flag yet
        return original(self, record)

    monkeypatch.setattr(Archive, "_write_obs", boom)
    with pytest.raises(KeyboardInterrupt):
        replay(ctx, START, END)
    assert ctx.archive.done_cycles() == [START]
    monkeypatch.setattr(Archive, "_write_obs", original)
    assert [o.status for o in replay(ctx, START, END)] == ["skipped", "done"]
    assert_same_archive(reference, ctx.archive)


KILLER = textwrap.dedent(
    """
    import os, signal, sys, yaml
    from align_da_ops import engine, archive, wiring
    from align_da_ops.analysis import threedvar
    from align_da_ops.campaign import CampaignConfig
    from align_da_ops.config import ExperimentConfig, load_config
    from align_da_ops.replaying import replay
    from align_da_ops.times import CycleTime
    stage, campaign_file, config_file = sys.argv[1:4]
    target = CycleTime.parse("{end}")
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    def at_target(fn, check):
        def wrapped(*a, **k):
            if check(*a, **k):
                die()
            return fn(*a, **k)
        return wrapped
    if stage == "observations":
        wiring.ObservationSource.__call__ = at_target(wiring.ObservationSource.__call__, lambda self, c: c == target)
    elif stage == "analysis":
        threedvar.ThreeDVar.analyse = at_target(threedvar.ThreeDVar.analyse, lambda *a, **k: engine_cycle[0] == target)
    elif stage == "forecast":
        engine.rollout = at_target(engine.rollout, lambda *a, **k: engine_cycle[0] == target)
    elif stage == "mid_archive":
        archive.Archive._write_product = at_target(
            archive.Archive._write_product, lambda self, product, *a, **k: product == "forecast" and engine_cycle[0] == target)
    elif stage == "before_flag":
        archive._atomic_write_text = at_target(
            archive._atomic_write_text, lambda path, text: path.name == target.compact + ".json")
    engine_cycle = [None]
    run = engine.run_cycle
    def tracking(ctx, cycle, force=False):
        engine_cycle[0] = cycle
        return run(ctx, cycle, force)
    import align_da_ops.replaying as rp
    rp.run_cycle = tracking
    campaign = CampaignConfig.model_validate(yaml.safe_load(open(campaign_file)))
    ctx = wiring.build_context(campaign, load_config(config_file))
    replay(ctx, campaign.first, campaign.last)
    """
)


@pytest.mark.parametrize("stage", ["observations", "analysis", "forecast", "mid_archive", "before_flag"])
def test_kill_9_at_each_stage_then_resume(reference, world, stage, tmp_path):
    root, config, experiment = world
    raw = campaign_dict(root / f"killed-{stage}", config)
    campaign_file = tmp_path / "campaign.yaml"
    campaign_file.write_text(yaml.safe_dump(raw))
    script = tmp_path / "killer.py"
    script.write_text(KILLER.replace("{end}", END.compact))
    proc = subprocess.run([sys.executable, str(script), stage, str(campaign_file), str(config)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ctx = build_context(CampaignConfig.model_validate(raw), experiment)
    assert ctx.archive.done_cycles() == [START]  # the killed cycle left no done flag
    assert [o.status for o in replay(ctx, START, END)] == ["skipped", "done"]
    assert_same_archive(reference, ctx.archive)


def test_second_engine_is_refused(world):
    ctx = make_ctx(world, "locked")
    other = make_ctx(world, "locked")
    with ctx.archive.locked():
        with pytest.raises(ArchiveError, match="locked by another engine"):
            with other.archive.locked():
                pass
    with other.archive.locked():  # released
        pass


def test_out_of_order_cycle_is_refused(world):
    ctx = make_ctx(world, "order")
    with pytest.raises(ArchiveError, match="not done; run cycles in order"):
        run_cycle(ctx, END)


def test_empty_observation_window_gives_a_flagged_analysis(world):
    ctx = make_ctx(world, "empty", observations={"networks": []})
    (outcome,) = replay(ctx, START, START)
    assert outcome.status == "done"
    prov = ctx.archive.provenance(START)
    assert prov["no_observations"] is True and prov["n_obs_used"] == 0
    np.testing.assert_array_equal(ctx.archive.read_state("analysis", START), ctx.archive.read_state("background", START))


def test_corrupt_feed_file_is_quarantined_and_the_cycle_goes_on(world, tmp_path):
    feed = tmp_path / "feed"
    (feed / "incoming").mkdir(parents=True)
    (feed / "incoming" / "garbage.bufr").write_bytes(b"\x00\x01 not bufr at all " * 20)
    obs = {"networks": [{"kind": "stations", "max_stations": 50}], "feed": {"root": str(feed)}}
    ctx = make_ctx(world, "feed", observations=obs)
    (outcome,) = replay(ctx, START, START)
    assert outcome.status == "done"
    quarantined = list((feed / "quarantine").iterdir())
    assert any(p.name.startswith("garbage") and not p.name.endswith(".txt") for p in quarantined)
    assert any(p.name.endswith(".reason.txt") for p in quarantined)


class NaNMethod:
    name = "nan"

    def analyse(self, background, obs, operator, generator):
        return AnalysisResult(analysis=background * float("nan"), diagnostics={"n_obs": float(len(obs))})


def test_nan_analysis_fails_before_archiving_or_falls_back(world):
    strict = make_ctx(world, "nan-strict", on_failure="fail")
    strict.method = NaNMethod()
    with pytest.raises(CycleFailedError, match="NaN"):
        run_cycle(strict, START)
    assert strict.archive.done_cycles() == []
    assert not (strict.archive.root / "grid.zarr").exists()  # nothing written
    lenient = make_ctx(world, "nan-lenient", on_failure="background")
    lenient.method = NaNMethod()
    assert run_cycle(lenient, START).status == "fallback"
    prov = lenient.archive.provenance(START)
    assert prov["fallback"] == "background" and "NaN" in prov["fallback_reason"]
    np.testing.assert_array_equal(lenient.archive.read_state("analysis", START), lenient.archive.read_state("background", START))


def test_archive_reads_lazily_with_xarray(reference):
    ds = xr.open_zarr(reference.grid_store, group="analysis", consolidated=False)
    assert ds["geopotential"].dims == ("time", "level", "latitude", "longitude")
    t = START.as_numpy()
    assert np.isfinite(ds["geopotential"].sel(time=t).values).all()
    assert np.isnan(ds["geopotential"].isel(time=-1).values).all()  # grown but unwritten


class CollapsedEnsemble:
    name = "collapsed"

    def analyse(self, background, obs, operator, generator):
        members = background.expand(4, *background.shape).clone()
        return AnalysisResult(analysis=background.clone(), members=members, diagnostics={"n_obs": float(len(obs))})


def test_collapsed_ensemble_fails_before_archiving(world):
    ctx = make_ctx(world, "collapsed", on_failure="fail")
    ctx.method = CollapsedEnsemble()
    with pytest.raises(CycleFailedError, match="ensemble collapsed"):
        run_cycle(ctx, START)
    assert ctx.archive.done_cycles() == []


class NaNModel:
    """A forecast model gone bad (e.g. NaN weights that slipped through)."""

    step_hours = 6

    def step(self, state):
        return state * float("nan")


def test_nan_forecasts_are_never_archived(world):
    for on_failure in ("fail", "background"):
        ctx = make_ctx(world, f"nan-forecast-{on_failure}", on_failure=on_failure)
        ctx.model = NaNModel()
        with pytest.raises(CycleFailedError, match="forecasts from the analysis have NaN"):
            run_cycle(ctx, START)
        assert ctx.archive.done_cycles() == []
