"""Scores of a suite's archives: per-cycle table, per-method summaries with CIs, paired comparisons, tuning.

Everything is computed from the archives (the source of truth) over each run's
scoring window only. The per-cycle table has one row per (network, method, seed,
lead, cycle_time) and one column per score (`evaluation.archive_scores` plus the
O−B/O−A RMS columns of `evaluation.departure_scores` at lead 0).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from align_da_ops import evaluation, statistics
from align_da_ops.archive import Archive
from align_da_ops.suite import Run, SuiteConfig
from align_da_ops.times import CycleTime

KEYS = ["network", "method", "seed", "lead", "cycle_time"]
HEADLINE_CHANNELS = (
    "geopotential_500", "temperature_850", "u_component_of_wind_500", "v_component_of_wind_500",
    "u_component_of_wind_1000", "v_component_of_wind_1000", "surface_pressure",
)


def report_scores(columns) -> list[str]:
    """The scores that get CIs and comparisons: headline WRMSE/ACC/CRPS/SSR inputs, all-channel MSE/MAE,
    balance, O−B RMS (every other column stays in the per-cycle table and the summary)."""
    wanted = ["mse_normalized", "mae_normalized"]
    for c in HEADLINE_CHANNELS:
        wanted += [f"wrmse_{c}", f"bias_{c}", f"acc_{c}", f"crps_{c}", f"spread_{c}", f"ensrmse_{c}"]
    wanted += [c for c in columns if c.startswith(("imbalance_", "patch_ratio_", "omb_rms_", "oma_rms_", "rankhist_",
                                                    "n_members", "seconds_"))]
    return [c for c in wanted if c in columns]


def run_table(run: Run, truth, norm, climatology) -> pd.DataFrame:
    """Per-cycle scores of one run over its scoring window, with the KEYS as columns."""
    archive = Archive.open(run.campaign.archive)
    scores = evaluation.archive_scores(archive, truth, run.method, norm=norm, climatology=climatology,
                                       start=run.score_start, end=run.score_end)
    if scores.empty:
        return pd.DataFrame(columns=KEYS)
    scores = scores.reset_index()
    cycles = [CycleTime(t.to_pydatetime()) for t in scores.loc[scores["lead"] == pd.Timedelta(0), "cycle_time"]]
    departures = evaluation.departure_scores(archive, cycles)
    analysis_rows = scores["lead"] == pd.Timedelta(0)
    departures = departures.join(_cost(archive, cycles), how="outer")
    if len(departures.columns):
        merged = scores[analysis_rows].merge(departures, left_on="cycle_time", right_index=True, how="left")
        scores = pd.concat([merged, scores[~analysis_rows]], ignore_index=True)
    scores["lead"] = (scores["lead"] / pd.Timedelta(hours=1)).astype(int)
    scores.insert(0, "network", run.network)
    scores.insert(2, "seed", run.seed)
    return scores.drop(columns=["method"]).assign(method=run.method)[KEYS + [c for c in scores.columns if c not in KEYS + ["method"]]]


def _cost(archive: Archive, cycles) -> pd.DataFrame:
    """Wall seconds per cycle (every stage) and of the analysis stage, from the done flags, by cycle time."""
    rows = {}
    for cycle in cycles:
        wall = archive.provenance(cycle).get("wall_s", {})
        rows[pd.Timestamp(cycle.value)] = {"seconds_cycle": float(sum(wall.values())), "seconds_analysis": float(wall.get("analysis", np.nan))}
    return pd.DataFrame.from_dict(rows, orient="index")


def run_tables(runs: list[Run], truth, norm, climatology, client=None) -> list[pd.DataFrame]:
    """`run_table` of every run, in order, each distinct archive scored once: in this process, or with a
    `distributed.Client` one task per archive (the result does not depend on it)."""
    from align_da_ops.suite import distinct_runs

    distinct = distinct_runs(runs)
    if client is None:
        scored = [run_table(run, truth, norm, climatology) for run in distinct]
    else:
        from align_da_ops.cluster import run_tasks

        scored = run_tasks(client, run_table, distinct, truth, norm, climatology,
                           keys=[f"score-{i}-{run.campaign.name}" for i, run in enumerate(distinct)])
    cache = {run.campaign.archive: table for run, table in zip(distinct, scored)}
    return [cache[run.campaign.archive].assign(network=run.network, seed=run.seed) for run in runs]


def collect(runs: list[Run], truth, norm, climatology, client=None) -> pd.DataFrame:
    """The per-cycle table of every run (shared free runs repeated for each network and seed)."""
    return pd.concat(run_tables(runs, truth, norm, climatology, client), ignore_index=True)


def _matrix(group: pd.DataFrame, score: str) -> tuple[np.ndarray, np.ndarray]:
    """(seed, cycle) values of one score and the common cycle times (cycles missing for a seed dropped)."""
    wide = group.pivot_table(index="seed", columns="cycle_time", values=score, aggfunc="first", dropna=False)
    wide = wide.dropna(axis=1, how="any")
    return wide.to_numpy(), wide.columns.to_numpy()


def summarise(table: pd.DataFrame, suite: SuiteConfig, scores: list[str] | None = None) -> pd.DataFrame:
    """One row per (network, method, lead, score, seed): the aggregate over cycles (seed 'all': over every
    seed, with the 95 % moving-block-bootstrap interval and the std across seeds)."""
    scores = scores or report_scores(table.columns)
    block = max(1, int(round(suite.block_days * 4)))
    rows = []
    for (network, method, lead), group in table.groupby(["network", "method", "lead"], sort=False):
        for score in scores:
            if group[score].isna().all():
                continue
            values, cycles = _matrix(group, score)
            if values.size == 0:
                continue
            per_seed = [statistics.aggregate(v, score) for v in values]
            low, high = statistics.bootstrap_interval(values, score, block, suite.resamples)
            base = {"network": network, "method": method, "lead_h": lead, "score": score, "n_cycles": values.shape[1]}
            rows.append({**base, "seed": "all", "value": statistics.aggregate(values, score), "ci_low": low,
                         "ci_high": high, "seed_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0})
            seeds = sorted(group["seed"].unique())
            rows += [{**base, "seed": str(s), "value": v} for s, v in zip(seeds, per_seed)]
    return pd.DataFrame(rows)


def compare_methods(table: pd.DataFrame, suite: SuiteConfig, scores: list[str] | None = None) -> pd.DataFrame:
    """Paired comparisons A vs B for every pair of methods (A later in the suite's list), network, lead, score."""
    scores = scores or report_scores(table.columns)
    block = max(1, int(round(suite.block_days * 4)))
    names = [m.name for m in suite.methods if m.name in set(table["method"])]
    rows = []
    for (network, lead), group in table.groupby(["network", "lead"], sort=False):
        by_method = {m: g for m, g in group.groupby("method")}
        for i, a in enumerate(names):
            for b in names[:i]:
                if a not in by_method or b not in by_method:
                    continue
                for score in scores:
                    va, ca = _matrix(by_method[a], score)
                    vb, cb = _matrix(by_method[b], score)
                    common = np.intersect1d(ca, cb)
                    if common.size < 2:
                        continue
                    va, vb = va[:, np.isin(ca, common)], vb[:, np.isin(cb, common)]
                    cmp = statistics.compare(va, vb, score, block, suite.resamples)
                    rows.append({"network": network, "lead_h": lead, "a": a, "b": b, "score": score,
                                 "n_cycles": common.size, "value_a": cmp.a, "value_b": cmp.b,
                                 "difference": cmp.difference, "ci_low": cmp.low, "ci_high": cmp.high,
                                 "relative": cmp.relative, "verdict": cmp.verdict})
    return pd.DataFrame(rows)


def paired_differences(table: pd.DataFrame, a: str, b: str, network: str, score: str, lead: int = 0) -> pd.Series:
    """Per-cycle seed-mean of A − B for one score (the time series behind a comparison)."""
    sel = table[(table["network"] == network) & (table["lead"] == lead)]
    wa = sel[sel["method"] == a].pivot_table(index="cycle_time", columns="seed", values=score)
    wb = sel[sel["method"] == b].pivot_table(index="cycle_time", columns="seed", values=score)
    return (wa - wb).mean(axis=1).dropna()


# -- tuning --------------------------------------------------------------------------------------
def tuning_table(runs: list[Run], suite: SuiteConfig, truth, norm, climatology, client=None) -> pd.DataFrame:
    """One row per (method, network, candidate): the tuning score over the validation window and tuning
    seeds, its ratio to the best candidate, `chosen` for the best, and for 3D-Var the Desroziers
    diagnostics pooled over every used observation (ratio_r ≈ 1, ratio_b ≈ 1, chi2_per_n ≈ 1).
    Archives are scored as in `collect` (`client`: one task each)."""
    rows = {}
    for run, table in zip(runs, run_tables(runs, truth, norm, climatology, client)):
        key = (run.method, run.network, json.dumps(run.overrides, sort_keys=True))
        sel = table[table["lead"] == suite.tuning_lead]
        row = rows.setdefault(key, {"method": run.method, "network": run.network, "candidate": key[2], "_values": []})
        row["_values"].append(sel[suite.tuning_score].to_numpy())
        if run.campaign.analysis.kind == "threedvar":
            row.update(_desroziers_summary(run))
    out = []
    for row in rows.values():
        values = np.concatenate(row.pop("_values"))
        out.append({**row, suite.tuning_score: statistics.aggregate(values, suite.tuning_score), "n_cycles": len(values)})
    df = pd.DataFrame(out)
    if df.empty:
        return df
    best = df.groupby(["method", "network"])[suite.tuning_score].transform("min")
    df["ratio_to_best"] = df[suite.tuning_score] / best
    df["chosen"] = df[suite.tuning_score] == best
    return df


def _desroziers_summary(run: Run) -> dict[str, float]:
    from align_da_ops.analysis.threedvar import covariance_from_config

    archive = Archive.open(run.campaign.archive)
    cycles = [c for c in archive.done_cycles() if run.score_start <= c.value <= run.score_end]
    cov = covariance_from_config(run.campaign.analysis, archive.layout.channels, archive.lat, archive.lon)
    variance = dict(zip(archive.layout.channels, cov.variances().tolist()))
    d = evaluation.desroziers(archive, cycles, variance)
    if d.empty:
        return {}
    n = d["count"]
    pooled = lambda col: float((d[col] * n).sum() / n.sum())  # noqa: E731  (count-weighted mean over groups)
    return {"desroziers_ratio_r": pooled("ratio_r"), "desroziers_ratio_b": pooled("ratio_b"),
            "chi2_per_n": pooled("chi2_per_n")}
