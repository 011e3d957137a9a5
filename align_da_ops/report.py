"""`align-da report`: a static HTML page (index.html + PNGs, no server, no JavaScript) about one archive.

In the spirit of JEDI's EVA and DART's obs_diag: scores against the truth (OSSEs), observation-space
statistics (O−B/O−A tables, histograms, vertical profiles, RMS per cycle), maps of one cycle, ensemble
spread and spread–skill, QC counts, fallbacks and failures, and the run's provenance. Every piece of
text put into the page is HTML-escaped. An archive without a truth (real data, or a campaign file that
is gone) gets the page without the truth sections, which says why.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from align_da_ops import grid, plots
from align_da_ops.archive import Archive
from align_da_ops.errors import ArchiveError, SchemaError
from align_da_ops.obs.batch import QCFlag
from align_da_ops.times import CycleTime

PER_CYCLE_KEYS = frozenset({"cycle", "seed", "member_seeds", "cold_start", "qc_counts", "n_obs_used", "diagnostics",
                            "departures", "wall_s", "checksums", "fallback", "fallback_reason", "no_observations"})
DRIFT_NOTE = ("drift z500 = WRMSE of z500 over the last third of the cycles ÷ over the middle third, at the same lead "
              "(≈ 1: steady; > 1: errors grow during the run; blank with fewer than 6 cycles).")


class TruthInfo(NamedTuple):
    """The truth an archive is scored against: states (None: no truth), normalisation, ACC climatology,
    and `note`, why there is no truth (empty when there is)."""

    states: object
    norm: object
    climatology: object
    note: str


def truth_for(archive: Archive, experiment_file: str | Path | None = None) -> TruthInfo:
    """The nature run the archive cycled against (OSSE): the experiment config `experiment_file` when given,
    else the one the first done cycle's provenance names (`campaign_file`, then `experiment_file`); no truth
    when none of those files exists or the data is not a nature run."""
    from align_da_ops.campaign import load_campaign
    from align_da_ops.config import load_config

    done = archive.done_cycles()
    if not done:
        return TruthInfo(None, None, None, "no cycle is done")
    provenance = archive.provenance(done[0])
    if experiment_file is not None:
        experiment = load_config(experiment_file)
    elif provenance.get("campaign_file") and Path(provenance["campaign_file"]).exists():
        _, experiment = load_campaign(provenance["campaign_file"])
    elif provenance.get("experiment_file") and Path(provenance["experiment_file"]).exists():
        experiment = load_config(provenance["experiment_file"])
    else:
        named = provenance.get("campaign_file") or provenance.get("experiment_file") or "(not recorded)"
        return TruthInfo(None, None, None, f"the campaign/experiment file {named} is not available (give --truth CONFIG)")
    if experiment.data.kind != "nature_run":
        return TruthInfo(None, None, None, f"the campaign cycles {experiment.data.kind} data (real observations, no truth)")
    return TruthInfo(*truth_norm_climatology(experiment), "")


def truth_norm_climatology(experiment):
    """Truth states, normalisation and the training split's symmetric climatology (the ACC reference) of an OSSE."""
    from align_da_ops.data.sources import layout_of, open_states, read_normalization
    from align_da_ops.evaluation import acc_climatology

    truth = open_states(experiment)
    train = experiment.splits.train
    climatology = acc_climatology(truth, layout_of(experiment), train.start, train.end)
    return truth, read_normalization(experiment.nature_run.output), climatology


def write_report(path: str | Path, out_dir: str | Path, variable: str = "geopotential", level: int | None = 500,
                 cycle: CycleTime | None = None, truth_config: str | Path | None = None) -> Path:
    """Write `out_dir`/index.html and its PNGs for the archive at `path`; returns the page's path.

    `variable`/`level` choose the field of the maps and the time series; `cycle` the cycle of the maps and
    the observation-location map (default: the last done). SchemaError for a field the archive lacks,
    ArchiveError for a cycle that is not done."""
    from align_da_ops import evaluation

    archive = Archive.open(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = archive.done_cycles()
    _check_field(archive, variable, level)
    level = level if variable in archive.layout.upper_air else None
    cycle = cycle or (done[-1] if done else None)
    if done and cycle not in done:
        raise ArchiveError(f"cycle {cycle} is not done in {archive.root}; done: {done[0]} .. {done[-1]}")
    provenance = {c: archive.provenance(c) for c in done}
    truth = truth_for(archive, truth_config)
    page = _Page(f"align-da report: {archive.meta['experiment']}")
    page.add(_header(archive, path, provenance, truth))
    if not done:
        page.add("<p class='note'>No cycle is done yet: nothing to report.</p>")
        return page.write(out / "index.html")
    scores = None
    if truth.states is not None:
        scores = evaluation.archive_scores(archive, truth.states, archive.meta["experiment"], norm=truth.norm,
                                           climatology=truth.climatology)
    channel = f"{variable}_{level}" if level is not None else variable
    page.section("scores", "Scores against the truth", _scores_section(archive, scores, truth, channel, out))
    page.section("maps", f"Maps of {plots.field_label(variable, level)} at {cycle}",
                 _maps_section(archive, cycle, variable, level, truth, out))
    if archive.ensemble:
        page.section("ensemble", "Ensemble", _ensemble_section(archive, scores, channel, out))
    departures = plots.used_departures(archive, done)
    page.section("observations", "Observations", _observations_section(archive, cycle, done, departures, provenance, out))
    page.section("cycles", "Cycles, fallbacks and failures", _cycles_section(archive, provenance))
    page.section("provenance", "Provenance of the run", _provenance_section(archive, provenance))
    return page.write(out / "index.html")


def _check_field(archive: Archive, variable: str, level: int | None) -> None:
    layout = archive.layout
    if variable not in layout.upper_air + layout.surface:
        raise SchemaError(f"the archive has no variable {variable!r}; it has {list(layout.upper_air + layout.surface)}")
    if variable in layout.upper_air and level not in layout.levels:
        raise SchemaError(f"{variable!r} needs --level, one of {list(layout.levels)}; got {level}")


# -- sections ---------------------------------------------------------------------------------
def _header(archive: Archive, path, provenance: dict, truth: TruthInfo) -> str:
    done = list(provenance)
    last = provenance[done[-1]] if done else {}
    layout = archive.layout
    facts = {
        "campaign": archive.meta["experiment"],
        "experiment config": last.get("experiment", ""),
        "analysis / forecast model": f"{last.get('analysis_method', '?')} / {last.get('forecast_model', '?')}" if done else "",
        "archive": str(Path(path).resolve()),
        "cycles done": f"{len(done)}" + (f", {done[0]} .. {done[-1]}" if done else ""),
        "fallbacks / failed cycles": f"{sum(1 for p in provenance.values() if p.get('fallback'))} / {len(archive.failures())}",
        "truth": "the campaign's nature run (OSSE)" if truth.states is not None else f"none: {truth.note}",
        "grid": f"{len(archive.lat)} × {len(archive.lon)}, {len(layout.levels)} levels, "
                f"variables {', '.join(plots.field_label(v) for v in layout.upper_air + layout.surface)}",
        "forecast leads": ", ".join(f"{h} h" for h in archive.leads),
        "ensemble": f"{archive.n_members} members stored" if archive.n_members else ("spread stored" if archive.ensemble else "no"),
        "report made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return _definition_table(facts)


def _scores_section(archive: Archive, scores, truth: TruthInfo, channel: str, out: Path) -> str:
    from align_da_ops.evaluation import HEADLINE, drift, headline

    if scores is None or not len(scores):
        why = truth.note or "the truth does not cover the archived cycles"
        return (f"<p class='note'>No scores against a truth: {_e(why)}. Score tables, error maps and spread–skill "
                "need the nature run of an OSSE; the observation-space sections below still apply.</p>")
    leads = sorted(set(scores.index.get_level_values("lead")))
    head = ["lead", "cycles", *[f"{plots.field_label(v, p)} ({plots.units_of(v)})" for v, p in HEADLINE],
            "ACC z500", "MSE (normalised)", "drift z500"]
    rows, ids = [], []
    for lead in leads:
        hours = int(lead.total_seconds() // 3600)
        sel = scores.xs(lead, level="lead")
        h = headline(scores, hours)
        d = drift(scores, hours).get("geopotential_500", np.nan)
        rows.append([_lead_name(hours), len(sel), *h.values(), _mean(sel, "acc_geopotential_500"), _mean(sel, "mse_normalized"), d])
        ids.append(f"scores-lead-{hours}")
    parts = [
        "<p>Latitude-weighted RMSE against the truth (WeatherBench 2: square root of the mean squared error over "
        "cycles); lead 0 is the analysis, lead L the forecast from each cycle valid L hours later.</p>",
        _table(head, rows, ids, table_id="headline"),
        f"<p class='note'>{_e(DRIFT_NOTE)}</p>",
    ]
    name, units = plots.channel_label(channel), plots.channel_units(channel)
    variable = channel.rpartition("_")[0] if channel not in grid.VARIABLES else channel
    levels = archive.layout.levels if variable in archive.layout.upper_air else (None,)
    card_head = ["level", *[f"{kind} {_lead_name(int(lead.total_seconds() // 3600))} ({plots.units_of(variable)})"
                            for lead in leads for kind in ("WRMSE", "bias")]]
    card = []
    for p in levels:
        c = f"{variable}_{p}" if p is not None else variable
        row = [f"{p} hPa" if p is not None else "surface"]
        for lead in leads:
            sel = scores.xs(lead, level="lead")
            row += [_over_cycles(sel, f"wrmse_{c}"), _mean(sel, f"bias_{c}")]
        card.append(row)
    parts += [f"<h3>{_e(plots.field_label(variable))} ({_e(variable)}) by level and lead</h3>",
              "<p>Bias is the mean of state − truth over the grid (latitude-weighted) and the cycles.</p>",
              _table(card_head, card, table_id="scorecard"),
              _figure(plots.score_timeseries_png(scores, channel, out / "rmse_timeseries.png",
                                                 f"{name} against the truth ({units})"),
                      f"{name}: WRMSE and bias against the truth per lead, on the valid time of each analysis or forecast.")]
    return "\n".join(parts)


def _maps_section(archive: Archive, cycle: CycleTime, variable: str, level: int | None, truth: TruthInfo, out: Path) -> str:
    maps = plots.cycle_maps(archive, cycle, variable, level, out, truth.states)
    captions = {
        "analysis": "The analysis (sequential colour map).",
        "increment": "Analysis increment: what the observations changed (diverging colour map, white = 0); "
                     "circles: locations of the observations used in this cycle.",
        "background_error": "Background error against the truth; same colour scale as the analysis error.",
        "error": "Analysis error against the truth; same colour scale as the background error.",
        "spread": "Ensemble spread (standard deviation of the analysis members); circles: used observations.",
    }
    figures = [_figure(path, captions[key]) for key, (path, _) in maps.items()]
    note = "" if "error" in maps else f"<p class='note'>No error maps: {_e(truth.note or 'the truth does not cover this cycle')}.</p>"
    return note + f"<div class='grid'>{''.join(figures)}</div>"


def _ensemble_section(archive: Archive, scores, channel: str, out: Path) -> str:
    from align_da_ops.evaluation import HEADLINE
    from align_da_ops.verify import over_cycles

    intro = (f"<p>{archive.n_members} members stored. Spread: square root of the latitude-weighted mean of the members' "
             "(unbiased) variance; skill: WRMSE of the ensemble mean. A well-dispersed ensemble has spread ≈ RMSE.</p>")
    if scores is None or f"spread_{channel}" not in scores:
        return intro + "<p class='note'>No spread–skill: it needs the truth and the stored members.</p>"
    sel = scores.xs(pd.Timedelta(0), level="lead")
    rows = []
    for v, p in HEADLINE:
        c = f"{v}_{p}"
        if f"spread_{c}" in sel:
            spread, skill = over_cycles(sel[f"spread_{c}"], "spread_"), over_cycles(sel[f"ensrmse_{c}"], "ensrmse_")
            rows.append([f"{plots.field_label(v, p)} ({plots.units_of(v)})", spread, skill, spread / skill, _mean(sel, f"crps_{c}")])
    name = plots.channel_label(channel)
    return "\n".join([
        intro,
        _table(["field (units)", "spread", "RMSE of the mean", "spread / RMSE", "CRPS"], rows, table_id="ensemble"),
        _figure(plots.spread_skill_png(scores, channel, out / "spread_skill.png", f"{name} spread–skill of the analysis"),
                f"{name}: spread against the RMSE of the ensemble mean, per cycle (left) and as a scatter (right)."),
    ])


def _observations_section(archive: Archive, cycle: CycleTime, done, departures: pd.DataFrame, provenance: dict,
                          out: Path) -> str:
    parts = [f"<h3>QC flags over {len(done)} cycles</h3>", _qc_table(provenance)]
    batch, _, _ = archive.read_obs(cycle)
    where = pd.DataFrame({"latitude": batch.latitude, "longitude": batch.longitude, "obs_type": batch.obs_type,
                          "used": batch.passed})
    if len(where):
        parts.append(_figure(plots.locations_png(where, out / "obs_locations.png", f"observation locations, {cycle}"),
                             f"Where the observations of {cycle} are: one marker per observation type, coloured by what QC "
                             "did with the observations at that location."))
    if not len(departures):
        parts.append("<p class='note'>No used observations with O−B and O−A in the archive.</p>")
        return "\n".join(parts)
    span = f"{len(done)} cycles, {done[0]} .. {done[-1]}"
    stats = plots.histograms_png(departures, out / "departure_histograms.png", f"O−B and O−A of the used observations ({span})")
    head = ["type", "variable (units)", "count", "O−B mean", "O−B std", "O−B RMS", "O−A mean", "O−A std", "O−A RMS"]
    rows = [[t, f"{plots.field_label(v)} ({plots.units_of(v)})", int(r["count"]), r["omb_mean"], r["omb_std"], r["omb_rms"],
             r["oma_mean"], r["oma_std"], r["oma_rms"]] for (t, v), r in stats.iterrows()]
    ids = [f"departures-{t}-{v}" for t, v in stats.index]
    parts += [
        f"<h3>Departures of the used observations ({_e(span)})</h3>",
        "<p>O−B = y − H(background), O−A = y − H(analysis), in the variable's units; std with ddof 0. "
        "An analysis that fits the observations has |O−A| below |O−B|.</p>",
        _table(head, rows, ids, table_id="departures"),
        _figure(out / "departure_histograms.png", "O−B and O−A histograms per observation type and variable, "
                                                    "with count, mean and standard deviation in each legend."),
    ]
    profiles = plots.profile_stats(departures, archive.layout.levels)
    path = plots.profiles_png(profiles, out / "departure_profiles.png", f"O−B/O−A bias and RMS by pressure ({span})")
    if path is not None:
        parts.append(_figure(path, "Vertical profiles of O−B/O−A bias (dashed) and RMS (solid) per observation type, "
                                   "observations binned to the nearest model level."))
    parts.append(_figure(plots.departure_rms_timeseries_png(departures, out / "departure_rms.png", "O−B and O−A RMS per cycle"),
                         "O−B and O−A RMS of the used observations per cycle (cycle time, UTC)."))
    return "\n".join(parts)


def _qc_table(provenance: dict) -> str:
    totals: dict[str, int] = {}
    for prov in provenance.values():
        for flag, n in prov.get("qc_counts", {}).items():
            totals[flag] = totals.get(flag, 0) + int(n)
    if not totals:
        return "<p class='note'>The done flags hold no QC counts.</p>"
    order = [f.name.lower() for f in QCFlag]
    totals = dict(sorted(totals.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    everything = sum(totals.values())
    cycles_with = {flag: sum(1 for p in provenance.values() if p.get("qc_counts", {}).get(flag, 0)) for flag in totals}
    rows = [[flag, n, f"{100.0 * n / everything:.1f} %" if everything else "", cycles_with[flag]] for flag, n in totals.items()]
    return _table(["QC flag", "observations", "share", "cycles with any"], rows, [f"qc-{flag}" for flag in totals], table_id="qc")


def _cycles_section(archive: Archive, provenance: dict) -> str:
    rows, fallbacks = [], []
    for cycle, prov in provenance.items():
        dep = prov.get("departures", {})
        status = "fallback" if prov.get("fallback") else ("no observations" if prov.get("no_observations") else "done")
        rows.append([str(cycle), status, sum(prov.get("qc_counts", {}).values()), prov.get("n_obs_used", ""),
                     dep.get("omb_jo_per_n", np.nan), dep.get("oma_jo_per_n", np.nan), sum(prov.get("wall_s", {}).values())])
        if prov.get("fallback"):
            fallbacks.append([str(cycle), prov["fallback"], prov.get("fallback_reason", "")])
    parts = ["<h3>Fallback cycles</h3>"]
    if fallbacks:
        parts += ["<p>Cycles whose analysis failed its checks and were archived with the background as analysis.</p>",
                  _table(["cycle", "archived as analysis", "reason"], fallbacks, table_id="fallbacks")]
    else:
        parts.append("<p>None: every done cycle archived its own analysis.</p>")
    failures = archive.failures()
    parts.append("<h3>Failed cycles (not done)</h3>")
    if failures:
        parts.append(_table(["cycle", "error", "exit code", "at", "message"],
                            [[str(c), r.get("error", ""), r.get("exit_code", ""), r.get("at", ""), r.get("message", "")]
                             for c, r in failures.items()], table_id="failures"))
    else:
        parts.append("<p>None recorded.</p>")
    table = _table(["cycle", "status", "observations", "used", "O−B Jo/n", "O−A Jo/n", "wall s"], rows, table_id="cycles")
    parts += [f"<details{' open' if len(rows) <= 20 else ''}><summary>All {len(rows)} done cycles "
              "(Jo/n = mean of (departure / σₒ)² over the used observations)</summary>", table, "</details>"]
    return "\n".join(parts)


def _provenance_section(archive: Archive, provenance: dict) -> str:
    """Every per-run provenance key with its value; a value that changed during the run is listed with its cycles."""
    keys = sorted({k for prov in provenance.values() for k in prov} - PER_CYCLE_KEYS)
    facts = {}
    for key in keys:
        runs: list[tuple[str, list[CycleTime]]] = []
        for cycle, prov in provenance.items():
            text = _plain(prov.get(key))
            if runs and runs[-1][0] == text:
                runs[-1][1].append(cycle)
            else:
                runs.append((text, [cycle]))
        facts[key] = runs[0][0] if len(runs) == 1 else "; ".join(f"{t} ({c[0]} .. {c[-1]})" for t, c in runs)
    meta = {k: _plain(v) for k, v in archive.meta.items() if k not in ("latitudes", "longitudes")}
    return _definition_table(facts) + "<h3>Archive (archive.json)</h3>" + _definition_table(meta)


def _plain(value) -> str:
    """A provenance value as text: mappings as "key: value; ...", lists comma-separated, the rest as str."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    return str(value)


# -- HTML -------------------------------------------------------------------------------------
class _Page:
    """The page: a title, a table of contents of the sections, the sections."""

    def __init__(self, title: str):
        self.title = title
        self.head: list[str] = []
        self.sections: list[tuple[str, str, str]] = []

    def add(self, body: str) -> None:
        self.head.append(body)

    def section(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    def write(self, path: Path) -> Path:
        toc = " · ".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t, _ in self.sections)
        body = "\n".join(f"<section id='{a}'><h2>{_e(t)}</h2>\n{b}\n</section>" for a, t, b in self.sections)
        path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(self.title)}</title>
<style>{CSS}</style></head>
<body><h1>{_e(self.title)}</h1>
{''.join(self.head)}
<nav>{toc}</nav>
{body}
</body></html>
""", encoding="utf-8")
        return path


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1280px; margin: 1.5em auto;
       padding: 0 1.5em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; }
h2 { border-bottom: 2px solid #ccd; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { margin-top: 1.4em; }
nav { margin: 1em 0; padding: 0.5em 0.8em; background: #f2f4f8; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #d4d8e0; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef0f5; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
table.facts th { width: 12em; }
table.facts td { word-break: break-all; }
.note { color: #555; font-style: italic; }
figure { margin: 0.8em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e6ea; }
figcaption { font-size: 0.85em; color: #444; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 0.8em; }
details summary { cursor: pointer; margin: 0.5em 0; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return f"<td>{_e(value)}</td>"
    if isinstance(value, (int, np.integer)):
        return f"<td class='num'>{value}</td>"
    if isinstance(value, (float, np.floating)):
        return f"<td class='num'>{_number(value)}</td>"
    return f"<td>{_e(value)}</td>"


def _number(x: float) -> str:
    """Numbers on the page: 4 significant digits; blank for NaN."""
    return "" if not np.isfinite(x) else f"{x:.4g}"


def _table(head: list[str], rows: list[list], row_ids: list[str] | None = None, table_id: str = "") -> str:
    ids = row_ids or [""] * len(rows)
    body = "".join(f"<tr{_id(i)}>{''.join(_cell(v) for v in row)}</tr>" for i, row in zip(ids, rows))
    head_html = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table{_id(table_id)}><thead><tr>{head_html}</tr></thead><tbody>{body}</tbody></table>"


def _id(anchor: str) -> str:
    return f" id='{_e(anchor)}'" if anchor else ""


def _definition_table(facts: dict) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items())
    return f"<table class='facts'><tbody>{rows}</tbody></table>"


def _figure(path: Path, caption: str) -> str:
    return f"<figure><img src='{_e(Path(path).name)}' alt='{_e(caption)}'><figcaption>{_e(caption)}</figcaption></figure>"


def _lead_name(hours: int) -> str:
    return "analysis" if hours == 0 else f"+{hours} h"


def _mean(table: pd.DataFrame, column: str) -> float:
    return float(table[column].mean()) if column in table else np.nan


def _over_cycles(table: pd.DataFrame, column: str) -> float:
    from align_da_ops.verify import over_cycles

    return float(over_cycles(table[column], column)) if column in table else np.nan
