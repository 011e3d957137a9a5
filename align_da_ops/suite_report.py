"""What a suite run leaves for people and tools: stdout tables, CSV files and PNG figures.

Files (in the output directory):
  summary.csv      network, method, lead_h, score, seed ('all' or one seed), value, ci_low, ci_high,
                   seed_std, n_cycles; plus derived ssr_<channel> rows (spread–skill ratio)
  comparisons.csv  network, lead_h, a, b, score, value_a, value_b, difference (A − B), ci_low, ci_high,
                   relative, verdict (for A against B), n_cycles
  scores.png       per score: methods with 95 % CI bars, one colour per network
  differences.png  per-cycle paired differences (seed mean) of the last method against the others
  rank_histograms.png  rank histograms of ensemble methods (when any)
  report.md        the stdout tables in Markdown (for a wiki or a README)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from align_da_ops.suite import SuiteConfig
from align_da_ops.suite_scores import paired_differences

UNITS = {"geopotential": "m²/s²", "temperature": "K", "u_component_of_wind": "m/s", "v_component_of_wind": "m/s",
         "surface_pressure": "Pa"}
SHORT = {"geopotential": "z", "temperature": "t", "u_component_of_wind": "u", "v_component_of_wind": "v",
         "surface_pressure": "ps"}
# (score, lead) columns of the stdout table and panels of scores.png
TABLE = (
    ("wrmse_geopotential_500", 0), ("wrmse_temperature_850", 0), ("wrmse_u_component_of_wind_500", 0),
    ("wrmse_u_component_of_wind_1000", 0), ("wrmse_surface_pressure", 0), ("mse_normalized", 0),
    ("mae_normalized", 0), ("acc_geopotential_500", 0), ("crps_geopotential_500", 0), ("ssr_geopotential_500", 0),
    ("imbalance_500", 0), ("wrmse_geopotential_500", 24), ("wrmse_geopotential_500", 48), ("mse_normalized", 48),
    ("acc_geopotential_500", 48), ("seconds_analysis", 0), ("seconds_cycle", 0),
)
VERDICT_SCORES = (("mse_normalized", 0), ("wrmse_geopotential_500", 0), ("wrmse_temperature_850", 0),
                  ("mse_normalized", 48), ("wrmse_geopotential_500", 48), ("crps_geopotential_500", 0))


def label(score: str, lead: int = 0) -> str:
    """Human label with units: 'z500 RMSE (m²/s²)', '+48 h normalised MSE', ..."""
    prefix, _, channel = score.partition("_")
    names = {"wrmse": "RMSE", "acc": "ACC", "crps": "CRPS", "ssr": "spread/skill", "bias": "bias"}
    if score in ("seconds_cycle", "seconds_analysis"):
        text = "s / cycle" if score == "seconds_cycle" else "s / analysis"
    elif score in ("mse_normalized", "mae_normalized"):
        text = f"normalised {score[:3].upper()}"
    elif prefix == "imbalance":
        text = f"imbalance ratio {channel} hPa"
    elif prefix in names:
        variable, _, level = channel.rpartition("_") if channel[-1].isdigit() else (channel, "", "")
        unit = UNITS.get(variable, "") if prefix in ("wrmse", "crps", "bias") else ""
        text = f"{SHORT.get(variable, variable)}{level} {names[prefix]}" + (f" ({unit})" if unit else "")
    else:
        text = score
    return text if lead == 0 else f"+{lead} h {text}"


def with_spread_skill(summary: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Add ssr_<channel> rows: sqrt(mean spread²) / RMSE of the members' mean × sqrt((N+1)/N) (Fortin 2014)."""
    rows = []
    pooled = summary[summary["seed"] == "all"]
    for (network, method, lead), g in pooled.groupby(["network", "method", "lead_h"]):
        values = dict(zip(g["score"], g["value"]))
        n = values.get("n_members")
        for score, spread in values.items():
            if score.startswith("spread_") and n:
                skill = values.get("ensrmse_" + score[len("spread_"):])
                if skill:
                    rows.append({"network": network, "method": method, "lead_h": lead, "seed": "all",
                                 "score": "ssr_" + score[len("spread_"):], "value": spread / skill * np.sqrt((n + 1) / n),
                                 "n_cycles": int(g["n_cycles"].max())})
    return pd.concat([summary, pd.DataFrame(rows)], ignore_index=True) if rows else summary


def _pick(summary: pd.DataFrame, network: str, method: str, score: str, lead: int) -> pd.Series | None:
    sel = summary[(summary.network == network) & (summary.method == method) & (summary.score == score)
                  & (summary.lead_h == lead) & (summary.seed == "all")]
    return None if sel.empty else sel.iloc[0]


def _fmt(row: pd.Series | None) -> str:
    if row is None:
        return "—"
    v = row["value"]
    text = f"{v:.4g}" if abs(v) < 10 else f"{v:.0f}"
    if pd.notna(row.get("ci_low")):
        half = (row["ci_high"] - row["ci_low"]) / 2
        text += f" ±{half:.2g}" if abs(half) < 10 else f" ±{half:.0f}"
    return text


def shown(suite: SuiteConfig, scored: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(methods, networks) of the suite that `scored` (a summary or per-cycle table) holds, in suite order: a
    subset run (`--method`, `--network`) reports only what it scored."""
    methods, networks = set(scored.method), set(scored.network)
    return [m.name for m in suite.methods if m.name in methods], [n.name for n in suite.networks if n.name in networks]


def print_tables(console, suite: SuiteConfig, summary: pd.DataFrame, comparisons: pd.DataFrame) -> None:
    """Per network: methods × headline scores (value ±95 % CI half-width), then the verdicts."""
    from rich.table import Table

    methods, networks = shown(suite, summary)
    for network in networks:
        table = Table(title=f"{suite.name} — {network}: test period, {len(suite.seeds)} seeds, ±95 % CI "
                            f"(moving blocks of {suite.block_days:g} days)")
        table.add_column("method", no_wrap=True)
        present = [(s, lead) for s, lead in TABLE if ((summary.score == s) & (summary.lead_h == lead)).any()]
        for s, lead in present:
            table.add_column(label(s, lead), justify="right")
        for m in methods:
            table.add_row(m, *[_fmt(_pick(summary, network, m, s, lead)) for s, lead in present])
        truth = [_pick(summary, network, methods[0], f"imbalance_truth_{p}", 0) for p in (250, 500, 850)]
        console.print(table)
        if all(t is not None for t in truth):
            console.print(f"truth imbalance 250/500/850 hPa: {' / '.join(f'{t.value:.3f}' for t in truth)}")
        if comparisons.empty:
            continue
        verdicts = Table(title=f"{network}: A − B (95 % CI), verdict for A")
        for col in ("A vs B", *[label(s, lead) for s, lead in VERDICT_SCORES]):
            verdicts.add_column(col)
        sel = comparisons[comparisons.network == network]
        for (a, b), g in sel.groupby(["a", "b"], sort=False):
            cells = []
            for s, lead in VERDICT_SCORES:
                r = g[(g.score == s) & (g.lead_h == lead)]
                if r.empty:
                    cells.append("—")
                    continue
                r = r.iloc[0]
                cells.append(f"{100 * r.relative:+.1f} % [{r.ci_low:.3g}, {r.ci_high:.3g}] {r.verdict}")
            verdicts.add_row(f"{a} vs {b}", *cells)
        console.print(verdicts)


def markdown(suite: SuiteConfig, summary: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    """The per-network score tables (value ±95 % CI half-width) and the verdict tables, in Markdown."""
    methods, networks = shown(suite, summary)
    lines = []
    for network in networks:
        present = [(s, lead) for s, lead in TABLE if ((summary.score == s) & (summary.lead_h == lead)).any()]
        lines += [f"**{network}**", "", "| method | " + " | ".join(label(s, lead) for s, lead in present) + " |",
                  "|---" * (len(present) + 1) + "|"]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_fmt(_pick(summary, network, m, s, lead)) for s, lead in present) + " |")
        truth = [_pick(summary, network, methods[0], f"imbalance_truth_{p}", 0) for p in (250, 500, 850)]
        if all(t is not None for t in truth):
            lines += ["", f"Truth imbalance 250/500/850 hPa: {' / '.join(f'{t.value:.3f}' for t in truth)}."]
        sel = comparisons[comparisons.network == network] if not comparisons.empty else comparisons
        if len(sel):
            lines += ["", "| A vs B | " + " | ".join(label(s, lead) for s, lead in VERDICT_SCORES) + " |",
                      "|---" * (len(VERDICT_SCORES) + 1) + "|"]
            for (a, b), g in sel.groupby(["a", "b"], sort=False):
                cells = []
                for s, lead in VERDICT_SCORES:
                    r = g[(g.score == s) & (g.lead_h == lead)]
                    cells.append("—" if r.empty else f"{100 * r.iloc[0].relative:+.1f} % {r.iloc[0].verdict}")
                lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_files(out: Path, suite: SuiteConfig, table: pd.DataFrame, summary: pd.DataFrame,
                comparisons: pd.DataFrame) -> list[Path]:
    """summary.csv, comparisons.csv, report.md and the PNGs; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.csv", out / "comparisons.csv", out / "report.md"]
    summary.to_csv(paths[0], index=False, float_format="%.6g")
    comparisons.to_csv(paths[1], index=False, float_format="%.6g")
    paths[2].write_text(markdown(suite, summary, comparisons))
    paths.append(_scores_png(out / "scores.png", suite, summary))
    if len(shown(suite, table)[0]) > 1:
        paths.append(_differences_png(out / "differences.png", suite, table))
    ranks = [c for c in summary.score.unique() if c.startswith("rankhist_")]
    if ranks:
        paths.append(_rank_png(out / "rank_histograms.png", summary, ranks))
    return paths


def _scores_png(path: Path, suite: SuiteConfig, summary: pd.DataFrame) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, lead) for s, lead in TABLE if ((summary.score == s) & (summary.lead_h == lead) & summary.ci_low.notna()).any()]
    ncol = 4
    nrow = max(1, -(-len(panels) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    methods, networks = shown(suite, summary)
    width = 0.8 / len(networks)
    for ax, (s, lead) in zip(axes.ravel(), panels):
        for j, network in enumerate(networks):
            rows = [_pick(summary, network, m, s, lead) for m in methods]
            x = np.arange(len(methods)) + (j - (len(networks) - 1) / 2) * width
            v = np.array([r.value if r is not None else np.nan for r in rows])
            lo = np.array([r.ci_low if r is not None else np.nan for r in rows])
            hi = np.array([r.ci_high if r is not None else np.nan for r in rows])
            ax.bar(x, v, width, label=network, yerr=np.vstack([v - lo, hi - v]), capsize=3, alpha=0.8)
        if s.startswith("imbalance_"):
            truth = _pick(summary, networks[0], methods[0], s.replace("imbalance_", "imbalance_truth_"), lead)
            if truth is not None:
                ax.axhline(truth.value, color="k", ls="--", lw=1, label="truth")
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(label(s, lead), fontsize=9)
        finite = summary[(summary.score == s) & (summary.lead_h == lead)]["value"]
        if len(finite) and (finite > 0).all():
            ax.set_ylim(bottom=0.8 * finite.min() if s.startswith(("acc_", "ssr_")) else 0)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(f"{suite.name}: test-period scores, {len(suite.seeds)} seeds, 95 % moving-block bootstrap CIs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _differences_png(path: Path, suite: SuiteConfig, table: pd.DataFrame) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, networks = shown(suite, table)
    last = methods[-1]
    scores = [("mse_normalized", 0), ("wrmse_geopotential_500", 0), ("mse_normalized", 48)]
    fig, axes = plt.subplots(len(networks), len(scores), figsize=(5 * len(scores), 3 * len(networks)),
                             squeeze=False)
    for i, network in enumerate(networks):
        for k, (s, lead) in enumerate(scores):
            ax = axes[i, k]
            for other in methods[:-1]:
                d = paired_differences(table, last, other, network, s, lead)
                if len(d):
                    ax.plot(d.index, d.values, lw=1, label=f"{last} − {other}")
            ax.axhline(0, color="k", lw=0.8)
            ax.set_title(f"{network}: {label(s, lead)}", fontsize=9)
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
            ax.set_ylabel("A − B (seed mean); < 0: A better", fontsize=7)
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rank_png(path: Path, summary: pd.DataFrame, ranks: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channels = sorted({r.rsplit("_", 1)[0][len("rankhist_"):] for r in ranks})
    pooled = summary[(summary.seed == "all") & summary.score.isin(ranks)]
    groups = list(pooled.groupby(["network", "method"]))
    fig, axes = plt.subplots(len(channels), len(groups), figsize=(3 * len(groups), 2.6 * len(channels)), squeeze=False)
    for j, ((network, method), g) in enumerate(groups):
        for i, ch in enumerate(channels):
            rows = g[g.score.str.startswith(f"rankhist_{ch}_")]
            k = rows.score.str.rsplit("_", n=1).str[1].astype(int)
            ax = axes[i, j]
            ax.bar(k, rows.value)
            ax.axhline(1 / len(k), color="k", lw=0.8, ls="--")
            ax.set_title(f"{network} {method}\n{label('wrmse_' + ch).split(' ')[0]} rank of truth", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
