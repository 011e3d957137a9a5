"""The paired experiment harness: paired observations, suites (2-cycle smoke run), bootstrap statistics."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import yaml

from align_da_ops import statistics
from align_da_ops.archive import Archive
from align_da_ops.campaign import CampaignConfig
from align_da_ops.replaying import replay
from align_da_ops.suite import SuiteConfig, execute, load_suite, scoring_runs, scoring_window, tuning_runs
from align_da_ops.times import CycleTime
from align_da_ops.wiring import build_context

from factories import tiny_config, tiny_config_dict

START = CycleTime.parse("2000-01-02T00")
END = CycleTime.parse("2000-01-02T06")
MASK = {"kind": "random_mask", "fraction": 0.02, "noise": True}


@pytest.fixture(scope="module")
def world(tiny_nature_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_nature_run), sort_keys=False))
    return root, config, tiny_config(tiny_nature_run)


def _campaign(world, name: str, analysis: dict, seed: int = 0) -> CampaignConfig:
    root, config, _ = world
    return CampaignConfig.model_validate({
        "name": name, "config": str(config), "start": START.value.isoformat(), "end": END.value.isoformat(),
        "observations": {"networks": [MASK, {"kind": "stations", "max_stations": 100}]},
        "analysis": analysis, "cold_start": {"kind": "truth_offset", "offset_days": 1},
        "leads_hours": [6], "archive": str(root / name), "seed": seed,
    })


def _archived_obs(world, campaign: CampaignConfig):
    ctx = build_context(campaign, world[2])
    replay(ctx, START, END)
    return [ctx.archive.read_obs(c)[0] for c in (START, END)]


def test_campaigns_that_differ_in_method_assimilate_identical_observations(world):
    """Values, errors, locations and times are bitwise identical whatever the campaign's name and method;
    another seed gives another draw."""
    a = _archived_obs(world, _campaign(world, "pair-threedvar", {"kind": "threedvar", "max_iterations": 30}))
    b = _archived_obs(world, _campaign(world, "pair-free", {"kind": "background_only"}))
    c = _archived_obs(world, _campaign(world, "pair-threedvar-seed1", {"kind": "threedvar", "max_iterations": 30}, seed=1))
    for x, y, z in zip(a, b, c):
        assert len(x) > 100
        for column in ("value", "error", "latitude", "longitude", "pressure", "time", "variable", "station"):
            np.testing.assert_array_equal(getattr(x, column), getattr(y, column), err_msg=column)
        grid = x.obs_type == "grid"
        assert not np.array_equal(x.station[grid], z.station[grid])  # the mask moves with the seed


def _suite_dict(world) -> dict:
    root, config, _ = world
    return {
        "name": "smoke", "config": str(config), "seeds": [0, 1], "tuning_seeds": [0], "spinup_days": 0.25,
        "tuning_days": 0.25, "test_days": 0.5, "leads_hours": [6], "archive_root": str(root / "suites"),
        "cold_start": {"kind": "truth_offset", "offset_days": 0.25}, "block_days": 0.25, "resamples": 200,
        "forecast_model": {"kind": "persistence"},
        "networks": [{"name": "mask", "networks": [MASK]},
                     {"name": "stations", "networks": [{"kind": "stations", "max_stations": 100}]}],
        "methods": [
            {"name": "free", "analysis": {"kind": "background_only"}},
            {"name": "3dvar", "analysis": {"kind": "threedvar", "max_iterations": 30},
             "tuned": {"stations": {"b_scale": 2.0}}, "sweep": {"b_scale": [0.5, 2.0]}},
        ],
    }


def test_suite_expands_into_paired_campaigns(world):
    suite = SuiteConfig.model_validate(_suite_dict(world))
    experiment = world[2]
    runs = scoring_runs(suite, experiment)
    assert len(runs) == 2 * 2 * 2
    free = {r.campaign.archive for r in runs if r.method == "free"}
    assert len(free) == 2  # the free run does not depend on the seed: run once per network, paired with every seed
    var = [r for r in runs if r.method == "3dvar"]
    assert {r.campaign.analysis.b_scale for r in var if r.network == "stations"} == {2.0}
    assert {r.campaign.analysis.b_scale for r in var if r.network == "mask"} == {1.0}
    first, last = scoring_window(suite, experiment, "test")
    assert first == experiment.splits.test.start and (last - first).total_seconds() == 6 * 3600
    assert all(r.campaign.start < first and r.campaign.end == last for r in runs)
    assert len(tuning_runs(suite, experiment)) == 2 * 2  # 2 candidates x 2 networks x 1 seed
    raw = _suite_dict(world)
    raw["methods"][1]["sweep"] = [{"b_scale": [0.5, 2.0]}, {"length_factor": [0.7]}]  # coordinate descent
    runs = tuning_runs(SuiteConfig.model_validate(raw), experiment)
    assert len(runs) == 3 * 2
    lengths = [r for r in runs if r.overrides == {"length_factor": 0.7}]
    assert {(r.network, r.campaign.analysis.b_scale) for r in lengths} == {("mask", 1.0), ("stations", 2.0)}
    raw = _suite_dict(world)
    raw["methods"][1]["seeded"] = {1: {"length_factor": 0.7}}  # seed 1 cycles another model/setting
    suite = SuiteConfig.model_validate(raw)
    seeded = {(r.network, r.seed): r.campaign.analysis for r in scoring_runs(suite, experiment) if r.method == "3dvar"}
    assert {k: a.length_factor for k, a in seeded.items()} == {("mask", 0): 1.0, ("mask", 1): 0.7,
                                                               ("stations", 0): 1.0, ("stations", 1): 0.7}
    assert seeded[("stations", 1)].b_scale == 2.0  # tuned values stay in force
    assert {r.campaign.analysis.length_factor for r in tuning_runs(suite, experiment)} == {1.0}  # tuning seed 0
    raw["methods"][1]["seeded"] = {5: {"length_factor": 0.7}}
    with pytest.raises(ValueError, match=r"seeds \[5\] outside"):
        SuiteConfig.model_validate(raw)
    with pytest.raises(ValueError, match="unknown networks"):
        SuiteConfig.model_validate({**_suite_dict(world), "methods": [
            {"name": "3dvar", "analysis": {"kind": "threedvar"}, "tuned": {"swath": {"b_scale": 2}}}]})


def test_suite_smoke_run_tunes_scores_and_reports(world, tmp_path):
    """Two scored cycles per run: tuning table with Desroziers ratios, summary with CIs, paired verdicts, files."""
    from rich.console import Console

    from align_da_ops import suite_report
    from align_da_ops.cli import _truth_norm_climatology
    from align_da_ops.suite_scores import collect, compare_methods, summarise, tuning_table

    path = tmp_path / "smoke.suite.yaml"
    path.write_text(yaml.safe_dump(_suite_dict(world)))
    suite, experiment = load_suite(path)
    truth = _truth_norm_climatology(experiment)
    tuning = tuning_runs(suite, experiment)
    execute(tuning)
    tuned = tuning_table(tuning, suite, *truth)
    assert len(tuned) == 4 and tuned.groupby("network")["chosen"].sum().eq(1).all()
    assert {"desroziers_ratio_r", "desroziers_ratio_b", "chi2_per_n"} <= set(tuned.columns)
    assert np.isfinite(tuned["desroziers_ratio_r"]).all()

    runs = scoring_runs(suite, experiment)
    execute(runs)
    for run in runs:  # spin-up cycles run, scoring window covered
        assert Archive.open(run.campaign.archive).is_done(CycleTime(run.score_end))
    table = collect(runs, *truth)
    assert set(table["method"]) == {"free", "3dvar"} and set(table["seed"]) == {0, 1}
    analysis = table[table["lead"] == 0]
    assert len(analysis) == 2 * 2 * 2 * 2  # methods x networks x seeds x scored cycles
    assert "omb_rms_grid_temperature" in table.columns and "imbalance_500" in table.columns
    assert (analysis["seconds_cycle"] > analysis["seconds_analysis"]).all() and (analysis["seconds_analysis"] > 0).all()
    summary = summarise(table, suite)
    pooled = summary[(summary.seed == "all") & (summary.score == "mse_normalized") & (summary.lead_h == 0)]
    assert len(pooled) == 4 and (pooled.ci_low <= pooled.value).all() and (pooled.value <= pooled.ci_high).all()
    comparisons = compare_methods(table, suite)
    row = comparisons[(comparisons.score == "mse_normalized") & (comparisons.lead_h == 0)
                      & (comparisons.network == "mask")].iloc[0]
    assert (row.a, row.b) == ("3dvar", "free")
    assert row.verdict in ("better", "worse", "not distinguishable")
    assert row.difference == pytest.approx(row.value_a - row.value_b)
    text = io.StringIO()
    suite_report.print_tables(Console(file=text, width=300), suite, summary, comparisons)
    files = suite_report.write_files(tmp_path / "report", suite, table, summary, comparisons)
    assert {p.name for p in files} >= {"summary.csv", "comparisons.csv", "report.md", "scores.png", "differences.png"}
    assert "| 3dvar vs free |" in (tmp_path / "report" / "report.md").read_text()
    assert pd.read_csv(files[0]).columns.tolist()[:5] == ["network", "method", "lead_h", "score", "n_cycles"]
    assert "3dvar vs free" in text.getvalue() and "z500 RMSE (m²/s²)" in text.getvalue()
    # a subset run (`--method`, `--network`) reports only what it scored, no empty rows or tables
    first, other = [n.name for n in suite.networks]
    part = summary[(summary.network == first) & (summary.method == "3dvar")]
    report = suite_report.markdown(suite, part, comparisons.iloc[:0])
    assert f"**{first}**" in report and f"**{other}**" not in report
    assert "| 3dvar |" in report and "| free |" not in report


def test_network_filter_keeps_only_the_named_networks_runs(world, tmp_path):
    import typer

    from align_da_ops.suite_commands import _on_networks

    path = tmp_path / "smoke.suite.yaml"
    path.write_text(yaml.safe_dump(_suite_dict(world)))
    suite, experiment = load_suite(path)
    runs = scoring_runs(suite, experiment)
    mask = _on_networks(runs, suite, ["mask"])
    assert {r.network for r in runs} == {"mask", "stations"} and {r.network for r in mask} == {"mask"}
    assert len(mask) == sum(r.network == "mask" for r in runs) and _on_networks(runs, suite, []) == runs
    with pytest.raises(typer.BadParameter, match="unknown network .'radar'."):
        _on_networks(runs, suite, ["radar"])


# -- statistics -------------------------------------------------------------------------------------
def test_block_indices_are_runs_of_consecutive_cycles():
    rng = np.random.default_rng(0)
    idx = statistics.block_indices(50, 8, rng)
    assert idx.shape == (50,) and idx.min() >= 0 and idx.max() < 50
    assert all(np.all(np.diff(idx[k:k + 8]) == 1) for k in range(0, 48, 8))


def test_paired_comparison_oracles():
    rng = np.random.default_rng(1)
    b = 1.0 + rng.random((3, 120))
    same = statistics.compare(b, b, "mse_normalized", block=8, resamples=300)
    assert same.difference == 0 and same.low == 0 and same.high == 0 and same.verdict == "not distinguishable"
    shifted = statistics.compare(b - 0.5, b, "mse_normalized", block=8, resamples=300)
    assert shifted.difference == pytest.approx(-0.5) and shifted.high == pytest.approx(-0.5)
    assert shifted.verdict == "better"
    assert statistics.compare(b, b - 0.5, "acc_geopotential_500", block=8, resamples=300).verdict == "better"
    assert statistics.compare(b - 0.5, b, "bias_temperature_850", block=8, resamples=300).verdict == ""
    # RMSE aggregates as sqrt(mean MSE) (WeatherBench 2), not the mean of per-cycle RMSEs
    rmse = np.array([[3.0, 4.0]])
    assert statistics.aggregate(rmse, "wrmse_geopotential_500") == pytest.approx(np.sqrt(12.5))
    noise = statistics.compare(b + rng.normal(0, 0.3, b.shape), b, "mse_normalized", block=8, resamples=500)
    assert noise.low < noise.difference < noise.high


def test_moving_blocks_widen_the_interval_of_correlated_series():
    """An AR(1) series with a long memory: blocks give a wider (honest) interval than block 1."""
    rng = np.random.default_rng(2)
    x = np.zeros(400)
    for t in range(1, 400):
        x[t] = 0.95 * x[t - 1] + rng.normal()
    lo1, hi1 = statistics.bootstrap_interval(x[None], "mse_normalized", block=1, resamples=500)
    lo8, hi8 = statistics.bootstrap_interval(x[None], "mse_normalized", block=20, resamples=500)
    assert hi8 - lo8 > 2 * (hi1 - lo1)


def test_desroziers_diagnostics_recover_r_and_b_of_an_optimal_scalar_analysis(tmp_path):
    """Scalar OI with B = 4, R = 1, K = B/(B+R): E[d_oa d_ob] = R, E[d_ab d_ob] = B, χ²/n = 1 (Desroziers 2005)."""
    import torch

    from align_da_ops import evaluation, grid
    from align_da_ops.archive import CycleRecord
    from align_da_ops.obs.batch import ObsBatch

    layout = grid.StateLayout(("temperature",), (), (500,))
    lat, lon = grid.gaussian_latitudes(4), grid.longitudes(8)
    cycle = CycleTime.parse("2000-01-01T00")
    archive = Archive.create_or_open(tmp_path / "a", "oi", layout, lat, lon, (6,), cycle)
    rng = np.random.default_rng(0)
    n, b, r = 40000, 4.0, 1.0
    d_ob = rng.normal(0.0, np.sqrt(b + r), n)
    y = 250.0 + rng.normal(0.0, 1.0, n)
    hx_b = y - d_ob
    hx_a = hx_b + b / (b + r) * d_ob
    obs = ObsBatch.from_columns(latitude=np.zeros(n), longitude=np.zeros(n), pressure=np.full(n, 50000.0),
                                time=np.datetime64("2000-01-01T00:00:00"), variable="temperature", value=y,
                                error=np.full(n, np.sqrt(r)), obs_type="sonde")
    zero = torch.zeros(1, 4, 8)
    archive.write_cycle(CycleRecord(cycle, zero, zero, {6: zero}, obs, hx_b, hx_a, pd.DataFrame(), {}))
    d = evaluation.desroziers(archive, [cycle], {"temperature_500": b}).iloc[0]
    assert d["count"] == n
    assert d["ratio_r"] == pytest.approx(1.0, abs=0.03) and d["ratio_b"] == pytest.approx(1.0, abs=0.03)
    assert d["chi2_per_n"] == pytest.approx(1.0, abs=0.03) and d["hbh"] == b
