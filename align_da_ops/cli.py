"""`align-da`: the command-line entry point. Maps AlignDAError subclasses to exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from align_da_ops import logs
from align_da_ops.config import config_hash, load_config, resolved
from align_da_ops.errors import AlignDAError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Cycling data assimilation with Align-DA.")
config_app = typer.Typer(no_args_is_help=True, help="Validate and show configuration files.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (ratios measured side by side).")
app.add_typer(config_app, name="config")
archive_app = typer.Typer(no_args_is_help=True, help="Check cycling archives.")
app.add_typer(archive_app, name="archive")
app.add_typer(bench_app, name="bench")
train_app = typer.Typer(no_args_is_help=True, help="Train models on the configured data's splits.")
app.add_typer(train_app, name="train")
from align_da_ops.obs.cli import bench_obs, obs_app  # noqa: E402  (light: heavy imports live inside the commands)

app.add_typer(obs_app, name="obs")
bench_app.command("obs")(bench_obs)
from align_da_ops.forecast.commands import bench_forecast, train_forecast  # noqa: E402  (light, like obs.cli)

train_app.command("forecast")(train_forecast)
bench_app.command("forecast")(bench_forecast)
from align_da_ops.diffusion.commands import bench_prior, bench_sampler, train_prior  # noqa: E402  (light, like obs.cli)

train_app.command("prior")(train_prior)
bench_app.command("sampler")(bench_sampler)
bench_app.command("prior")(bench_prior)
from align_da_ops.latent.commands import train_autoencoder  # noqa: E402  (light, like forecast.commands)

train_app.command("autoencoder")(train_autoencoder)
from align_da_ops.align.commands import align_command, bench_alignment  # noqa: E402  (light, like obs.cli)

app.command("align")(align_command)
bench_app.command("alignment")(bench_alignment)
from align_da_ops.suite_commands import suite_app  # noqa: E402  (light, like obs.cli)

app.add_typer(suite_app, name="suite")
out = Console(width=None if sys.stdout.isatty() else 140)


def _show_version(value: bool) -> None:
    if value:
        import align_da_ops

        print(f"align-da {align_da_ops.__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    log_format: logs.LogFormat = typer.Option("console", help="console for people, json for services."),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads for every command (0: torch's choice); "
                                "a command's own --threads wins."),
):
    logs.configure(log_format, log_level)
    if threads:
        import torch

        torch.set_num_threads(threads)


# -- config -------------------------------------------------------------------------
def config_kind(path: Path) -> str:
    """'suite', 'campaign' or 'experiment', from the file's top-level keys (ConfigError if not a mapping)."""
    from align_da_ops.config import read_yaml_mapping

    keys = set(read_yaml_mapping(path, "config"))
    if {"methods", "networks"} <= keys:
        return "suite"
    if {"archive", "config"} <= keys or "analysis" in keys:
        return "campaign"
    return "experiment"


@config_app.command("validate")
def config_validate(paths: list[Path] = typer.Argument(..., help="Experiment configs, campaigns (cycles/*.yaml) or suites.")):
    """Check config files (experiment, campaign or suite, recognised by their keys); exit 2 naming the
    offending fields of the first invalid one."""
    from align_da_ops.campaign import load_campaign
    from align_da_ops.suite import load_suite

    for path in paths:
        kind = config_kind(path)
        if kind == "suite":
            suite, experiment = load_suite(path)
            out.print(f"[green]ok[/green] {path} (suite {suite.name}: {len(suite.methods)} methods x {len(suite.networks)} "
                      f"networks x {len(suite.seeds)} seeds; experiment {experiment.name})")
        elif kind == "campaign":
            campaign, experiment = load_campaign(path)
            out.print(f"[green]ok[/green] {path} (campaign {campaign.name}, {campaign.analysis.kind}; experiment {experiment.name}, "
                      f"hash {config_hash(campaign)})")
        else:
            cfg = load_config(path)
            out.print(f"[green]ok[/green] {path} (experiment {cfg.name}, hash {config_hash(cfg)})")


@config_app.command("show")
def config_show(
    path: Path,
    overrides: list[str] = typer.Option([], "--set", help="Override a value first, e.g. state.grid.truncation=42; repeatable."),
):
    """Print the resolved experiment config (all defaults filled in, overrides applied) as JSON, with its stable hash."""
    cfg = load_config(path, overrides)
    print(json.dumps({"hash": config_hash(cfg), "config": resolved(cfg)}, indent=2))


# -- archive ------------------------------------------------------------------------
@archive_app.command("verify")
def archive_verify(path: Path = typer.Argument(..., help="Archive directory (a campaign's `archive:`).")):
    """Verify every done cycle's products and obs file against the checksums in its done flag; exit 11 if any differ."""
    from align_da_ops.archive import Archive
    from align_da_ops.errors import ArchiveCorruptError

    archive = Archive.open(path)
    done = archive.done_cycles()
    problems = {str(c): p for c in done if (p := archive.verify(c))}
    unchecked = sum(1 for c in done if "checksums" not in archive.provenance(c))
    for cycle, items in problems.items():
        for item in items:
            out.print(f"[red]{cycle}[/red] {item}")
    out.print(f"{len(done)} done cycles, {len(problems)} damaged" + (f", {unchecked} without checksums (older archive)" if unchecked else ""))
    if problems:
        raise ArchiveCorruptError(f"{len(problems)} of {len(done)} done cycles in {path} are damaged: {sorted(problems)[:5]}")


# -- nature run -----------------------------------------------------------------------
@app.command("nature-run")
def nature_run(
    config: Path,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Zarr store (default: nature_run.output)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config value, e.g. nature_run.seed=3; repeatable."),
    workers: int = typer.Option(0, min=0, help="dask workers, one member group (nature_run.members_per_call) at a time "
                                "each (0: one per core, at most one per group; 1: in this process)."),
    threads: int = typer.Option(0, min=0, help="torch CPU threads per worker (0: the cores shared out among the workers; "
                                "in-process: torch's choice)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of a running dask scheduler instead of a LocalCluster."),
):
    """Generate (or resume) the OSSE nature run into a Zarr store, then check its climate."""
    from align_da_ops.cluster import client_for
    from align_da_ops.data import nature_run as nr
    from align_da_ops.data.plausibility import check_report, climate_report
    from align_da_ops.progress import progress_bar

    cfg = load_config(config, overrides)
    groups = nr.member_groups(cfg.nature_run) if cfg.nature_run else [(0, 1)]
    with client_for(len(groups), workers, threads, scheduler) as client, progress_bar("nature run (6-h states)") as bar:
        store = nr.generate(cfg, output, on_chunk=lambda done, total: bar(done, total), client=client)
    report = climate_report(nr.open_nature_run(store))
    _print_mapping(f"nature run {store}", report)
    problems = check_report(report)
    for p in problems:
        out.print(f"[yellow]warning[/yellow]: {p}")


@app.command("spinup")
def spinup(
    config: Path,
    output: Path = typer.Option(..., "--output", "-o", help="Restart file (.npz) to write."),
    days: Optional[float] = typer.Option(None, help="Days from rest (default: nature_run.spinup_days)."),
):
    """Spin the nature-run core up from rest and save the state for later runs."""
    from align_da_ops.data import nature_run as nr
    from align_da_ops.data.restarts import save_restart, spin_up
    from align_da_ops.devices import resolve_device
    from align_da_ops.errors import ConfigError

    cfg = load_config(config)
    if cfg.nature_run is None:
        raise ConfigError(f"{config} has no nature_run block")
    days = days or cfg.nature_run.spinup_days
    core = nr.build_core(cfg.nature_run, resolve_device(cfg.device))
    state = spin_up(core, days, cfg.nature_run.seed)
    save_restart(output, core, state, spinup_days=float(days), dt_minutes=core.dt_minutes, seed=cfg.nature_run.seed)
    out.print(f"wrote {output} ({core.spec.signature()}, {days:g} days)")


@app.command("stats")
def stats(
    config: Path,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Zarr store for the statistics."),
):
    """Per-channel normalisation statistics over the training split of the configured data."""
    from align_da_ops.data import sources

    cfg = load_config(config)
    layout = sources.layout_of(cfg)
    train = cfg.splits.train
    result = sources.compute_normalization(sources.open_split_trajectories(cfg, train), layout, train.start, train.end)
    target = output or sources.normalization_path(cfg)
    sources.write_normalization(result, target)
    table = Table(title=f"normalisation over {train.start:%Y-%m-%d %H}Z .. {train.end:%Y-%m-%d %H}Z -> {target}")
    for col in ("channel", "mean", "std"):
        table.add_column(col)
    for name, m, s in zip(result.channels, result.mean, result.std):
        table.add_row(name, f"{m:.6g}", f"{s:.6g}")
    out.print(table)


# -- inspect -----------------------------------------------------------------------------
@app.command("inspect")
def inspect(
    path: str = typer.Argument(help="Zarr store (path or fsspec URL), GRIB file (GRIB1/GRIB2) or archive directory."),
    variable: Optional[str] = typer.Option(None, "--var", help="Variable to map (ERA5/WB2 name)."),
    level: Optional[int] = typer.Option(None, help="Pressure level (hPa) for upper-air variables."),
    time_index: int = typer.Option(0, "--time", help="Time index (negative counts from the end)."),
    member: int = typer.Option(0, help="Member (trajectory) index."),
    png: Optional[Path] = typer.Option(None, help="Write a PNG map of --var here."),
    grib_filter: list[str] = typer.Option([], "--filter", help="GRIB: only messages with this ecCodes KEY=VALUE "
                                          "(repeatable), e.g. typeOfLevel=isobaricInhPa."),
):
    """Summarise a state store (Zarr or GRIB) or a cycling archive; optionally write PNGs."""
    from align_da_ops.inspection import is_archive, open_any, parse_filter, select_map, summary
    from align_da_ops.plots import field_label, map_png

    if is_archive(path):
        _inspect_archive(Path(path), variable or "geopotential", level if level is not None else (500 if variable is None else None), png)
        return
    try:
        keys = parse_filter(grib_filter)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--filter") from None
    ds = open_any(path, keys)
    info = summary(ds)
    table = Table(title=str(path))
    for col in ("variable", "dims", "units", "min", "mean", "max", "NaN"):
        table.add_column(col)
    for name, v in info["variables"].items():
        table.add_row(name, ",".join(v["dims"]), v["units"], f"{v['min']:.4g}", f"{v['mean']:.4g}", f"{v['max']:.4g}", str(v["nan_count"]))
    out.print(table)
    if "times" in info:
        t = info["times"]
        out.print(f"times: {t['count']} from {t['first']} to {t['last']}")
    if "levels" in info:
        out.print(f"levels (hPa): {info['levels']}")
    g = info["grid"]
    out.print(f"grid: {g['nlat']} x {g['nlon']}, latitudes {g['lat_range'][0]:.2f} .. {g['lat_range'][1]:.2f}")
    for key in ("title", "source", "truncation", "config_hash", "created", "complete"):
        if key in info["attrs"]:
            out.print(f"{key}: {info['attrs'][key]}")
    if png is not None:
        if variable is None:
            raise typer.BadParameter("--png needs --var")
        da = select_map(ds, variable, level, time_index, member)
        when = str(da["time"].values)[:16] if "time" in da.coords else ""
        map_png(da, png, f"{field_label(variable, level)} ({variable}) {when}", variable=variable)
        out.print(f"wrote {png}")


def _inspect_archive(path: Path, variable: str, level: Optional[int], png_dir: Optional[Path]) -> None:
    from align_da_ops import evaluation
    from align_da_ops.archive import Archive
    from align_da_ops.plots import archive_pngs
    from align_da_ops.report import truth_for

    archive = Archive.open(path)
    done = archive.done_cycles()
    out.print(f"archive {path}: experiment {archive.meta['experiment']}, {len(done)} cycles done"
              + (f", {done[0]} .. {done[-1]}" if done else ""))
    if not done:
        return
    truth = truth_for(archive)
    scores = None
    if truth.states is not None:
        scores = evaluation.archive_scores(archive, truth.states, archive.meta["experiment"], norm=truth.norm,
                                           climatology=truth.climatology)
        _print_scores({archive.meta["experiment"]: scores}, archive.leads)
    else:
        out.print(f"no scores against a truth: {truth.note}")
    flags = [c for c in done if archive.provenance(c).get("fallback") or archive.provenance(c).get("no_observations")]
    if flags:
        out.print(f"flagged cycles (fallback / no observations): {', '.join(map(str, flags[:10]))}")
    obs = evaluation.observation_table(archive, done[-4:])
    if len(obs):
        summary_obs = obs.groupby(["departure", "obs_type", "variable"])[["count", "rms", "jo_per_n"]].mean().reset_index()
        table = Table(title="observation departures (last 4 cycles, mean per cycle)")
        for col in summary_obs.columns:
            table.add_column(col)
        for row in summary_obs.itertuples(index=False):
            table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
        out.print(table)
    if png_dir is not None:
        for p in archive_pngs(archive, png_dir, variable, level, truth.states, scores):
            out.print(f"wrote {p}")


def _truth_norm_climatology(experiment):
    """`report.truth_norm_climatology` (truth, normalisation, ACC climatology of an OSSE), imported when called."""
    from align_da_ops.report import truth_norm_climatology

    return truth_norm_climatology(experiment)


def _print_scores(tables: dict, leads) -> None:
    from align_da_ops.evaluation import HEADLINE, drift, headline

    table = Table(title="WRMSE against truth, sqrt of the mean weighted MSE over cycles (z500 m²/s², t850 K, u/v500 m/s); "
                        "drift z500 = z500 WRMSE of the last third of the cycles / of the middle third "
                        "(≈1 steady, >1 growing errors; blank under 6 cycles)")
    short = {"geopotential": "z", "temperature": "t", "u_component_of_wind": "u", "v_component_of_wind": "v"}
    for col in ("run", "lead", *[f"{short[v]}{p}" for v, p in HEADLINE], "mse_norm", "mae_norm", "acc z500", "drift z500"):
        table.add_column(col)
    for name, scores in tables.items():
        present = set(scores.index.get_level_values("lead"))
        for lead in (0, *leads):
            import pandas as pd

            if pd.Timedelta(hours=lead) not in present:
                continue
            h = headline(scores, lead)
            sel = scores.xs(pd.Timedelta(hours=lead), level="lead")
            d = drift(scores, lead).get("geopotential_500", float("nan"))
            table.add_row(name, "analysis" if lead == 0 else f"+{lead} h", *[f"{x:.3g}" for x in h.values()],
                          f"{sel['mse_normalized'].mean():.4f}" if "mse_normalized" in sel else "",
                          f"{sel['mae_normalized'].mean():.4f}" if "mae_normalized" in sel else "",
                          f"{sel['acc_geopotential_500'].mean():.3f}" if "acc_geopotential_500" in sel else "",
                          f"{d:.2f}" if np.isfinite(d) else "")
    out.print(table)


@app.command("report")
def report_cmd(
    archive: Path = typer.Argument(..., help="Archive directory (a campaign's `archive:`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for index.html and its PNGs."),
    variable: str = typer.Option("geopotential", "--var", help="Variable of the maps and time series (ERA5/WB2 name)."),
    level: Optional[int] = typer.Option(None, help="Pressure level (hPa) of --var; default 500 for geopotential."),
    cycle: Optional[str] = typer.Option(None, help="Cycle the maps show, e.g. 2000-01-11T06; default the last done."),
    truth: Optional[Path] = typer.Option(None, help="Experiment config whose nature run is the truth (default: the one "
                                         "the archive's provenance names)."),
):
    """Write a static HTML report of an archive: scores, observation statistics, maps, ensemble, QC, provenance."""
    from align_da_ops.inspection import is_archive
    from align_da_ops.report import write_report
    from align_da_ops.times import CycleTime

    if not is_archive(archive):
        raise typer.BadParameter(f"{archive} is not an archive (no archive.json)")
    try:
        when = CycleTime.parse(cycle) if cycle is not None else None
    except ValueError as exc:
        raise typer.BadParameter(f"--cycle {cycle!r}: {exc}") from None
    if level is None and variable == "geopotential":
        level = 500
    out.print(f"wrote {write_report(archive, output, variable, level, when, truth)}")


# -- cycling ---------------------------------------------------------------------------------
from align_da_ops.cycling_commands import cycle_cmd, replay_cmd, serve_cmd, status_cmd  # noqa: E402  (light, like obs.cli)

app.command("cycle")(cycle_cmd)
app.command("replay")(replay_cmd)
app.command("serve")(serve_cmd)
app.command("status")(status_cmd)


@app.command("nmc")
def nmc_cmd(
    campaign: Path,
    output: Path = typer.Option(..., "--output", "-o", help="B file (.npz) to write."),
    samples: int = typer.Option(40, help="Valid times (forecast pairs) from the training split."),
    long_hours: int = typer.Option(48, help="Long lead (h)."),
    short_hours: int = typer.Option(24, help="Short lead (h)."),
):
    """Estimate a spectral B by the NMC method with the campaign's forecast model (for 3D-Var's `covariance`)."""
    from align_da_ops.analysis.nmc import nmc_covariance, nmc_valid_times
    from align_da_ops.campaign import load_campaign
    from align_da_ops.data.sources import layout_of, training_trajectory
    from align_da_ops.devices import resolve_device
    from align_da_ops.wiring import build_model

    camp, experiment = load_campaign(campaign)
    device = resolve_device(experiment.device)
    layout = layout_of(experiment)
    states = training_trajectory(experiment)
    train = experiment.splits.train
    times = nmc_valid_times(states, train.start, train.end, long_hours, samples)
    model = build_model(camp, experiment, layout, device)
    cov = nmc_covariance(model, states, layout, times, long_hours, short_hours, device)
    cov.save(output)
    sigma = np.sqrt(cov.variances())
    lengths = cov.length_scales()
    table = Table(title=f"NMC B ({len(times)} pairs, {long_hours} h - {short_hours} h) -> {output}")
    for col in ("channel", "sigma_b", "length (km)"):
        table.add_column(col)
    for name, s_, l_ in zip(layout.channels, sigma, lengths):
        if name.endswith(("_500", "_850")) or "_" not in name or name.startswith("surface"):
            table.add_row(name, f"{s_:.4g}", f"{l_ / 1e3:.0f}")
    out.print(table)


# -- bench -------------------------------------------------------------------------------
@bench_app.command("nature-run")
def bench_nature_run(
    truncations: str = typer.Option("21,42", help="Comma-separated truncations (21, 42, 85)."),
    hours: float = typer.Option(24.0, help="Simulated hours per timing."),
    members: str = typer.Option("1", help="Trajectories stepped in one batch; several (1,8) are timed side by side."),
    cpu_threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
):
    """Seconds per simulated 6 h of the Held–Suarez core (and per simulated year per trajectory), on CPU and on
    CUDA when present; the ratio is per trajectory, to the first row."""
    import torch

    from align_da_ops.bench import bench_nature_run as run
    from align_da_ops.diffusion.commands import _parse_ints

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    rows = run(tuple(int(t) for t in truncations.split(",")), devices, hours=hours,
               members=tuple(_parse_ints(members, "--members")))
    _print_table(f"nature-run core: seconds per simulated 6 h (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)",
                 ("device", "grid", "dt (min)", "members", "s / 6 h", "s / 6 h / member", "s / year / member", "ratio"),
                 [(r["device"], r["grid"], f"{r['dt_min']:g}", r["members"], f"{r['s_per_6h']:.3f}",
                   f"{r['s_per_6h_per_member']:.3f}", f"{r['s_per_6h_per_member'] * 1461:.0f}", f"{r['ratio_to_first']:.2f}")
                  for r in rows])


@bench_app.command("cycling")
def bench_cycling(
    campaigns: list[Path] = typer.Argument(..., help="Campaign files; each is replayed first if not done."),
    start: Optional[str] = typer.Option(None, help="First cycle run and scored (default: the campaign's start)."),
    end: Optional[str] = typer.Option(None, help="Last cycle run and scored (default: the campaign's end)."),
):
    """Per campaign: analysis and 48-h forecast WRMSE (z500, t850, u/v500), seconds per cycle by stage.

    One campaign, one seed, no confidence intervals: for method comparisons use `align-da suite run`.
    """
    from align_da_ops import evaluation
    from align_da_ops.cycling_commands import context
    from align_da_ops.replaying import replay
    from align_da_ops.times import CycleTime

    tables, stages = {}, {}
    for path in campaigns:
        ctx = context(path)
        if ctx.experiment.data.kind != "nature_run":
            raise typer.BadParameter(f"{path}: bench cycling scores against the truth of an OSSE (data.kind nature_run)")
        first = CycleTime.parse(start) if start else ctx.campaign.first
        last = CycleTime.parse(end) if end else ctx.campaign.last
        if last is None:
            raise typer.BadParameter(f"{path} has no end; give --end")
        replay(ctx, ctx.campaign.first if first > ctx.campaign.first else first, last)
        truth, norm, climatology = _truth_norm_climatology(ctx.experiment)
        tables[ctx.campaign.name] = evaluation.archive_scores(
            ctx.archive, truth, ctx.campaign.name, norm=norm, climatology=climatology, start=first.value, end=last.value
        )
        stages[ctx.campaign.name] = evaluation.stage_seconds(ctx.archive, first.value, last.value)
    _print_scores(tables, (48,))
    table = Table(title="seconds per cycle by stage (mean over cycles)")
    names = sorted({k for s in stages.values() for k in s})
    for col in ("run", *names, "total"):
        table.add_column(col)
    for run, s in stages.items():
        table.add_row(run, *[f"{s.get(k, 0):.3f}" for k in names], f"{sum(s.values()):.3f}")
    out.print(table)


@bench_app.command("letkf")
def bench_letkf(
    config: Path = typer.Argument(Path("config/tiny.yaml"), help="Experiment config (an OSSE)."),
    members: str = typer.Option("10,20,40", help="Ensemble sizes to time."),
    length_km: float = typer.Option(2000.0, help="Horizontal localisation half-width (km)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
):
    """Seconds per LETKF analysis and per 6-h member forecast against ensemble size, 3D-Var alongside (CPU; CUDA too)."""
    import torch

    from align_da_ops.analysis.benchmark import time_letkf
    from align_da_ops.diffusion.commands import _parse_ints

    if threads:
        torch.set_num_threads(threads)
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    rows, n_obs = time_letkf(config, tuple(_parse_ints(members, "--members")), devices, horizontal_length_km=length_km)
    table = Table(title=f"LETKF vs 3D-Var: seconds per analysis ({n_obs} observations, 1 % mask; torch {torch.__version__}, "
                        f"{torch.get_num_threads()} CPU threads)")
    for col in ("device", "method", "members", "s / analysis", "s / 6-h member forecasts", "s / cycle", "analysis / 3D-Var"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["device"], r["method"], str(r["members"]), f"{r['s_analysis']:.3f}", f"{r['s_member_forecasts']:.3f}",
                      f"{r['s_cycle']:.3f}", f"{r['ratio_to_3dvar']:.2f}")
    out.print(table)


def _print_table(title: str, columns, rows) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    out.print(table)


@bench_app.command("scale")
def bench_scale(
    config: Path = typer.Argument(Path("config/tiny.yaml"), help="Experiment config (an OSSE with shipped models)."),
    parts: str = typer.Option("suite,preferences,verification", help="Which measurements (comma-separated)."),
    workers: int = typer.Option(2, min=1, help="dask workers of the LocalCluster (cores shared out among them)."),
    days: float = typer.Option(2.0, help="Scored days per campaign of the 4-campaign suite (after 1 day of spin-up)."),
    cases: int = typer.Option(8, help="Preference cases."),
    lengths: str = typer.Option("120,1460", help="Cycles of the synthetic archives scored for memory."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the measurements here."),
):
    """Serial vs dask workers (suite of 4 campaigns, preference cases: wall ratio, one run) and the peak
    memory of verification as archives grow (block by block vs read whole)."""
    import json

    from align_da_ops import scaling_bench
    from align_da_ops.diffusion.commands import _parse_ints

    wanted = set(parts.split(","))
    unknown = wanted - {"suite", "preferences", "verification"}
    if unknown:
        raise typer.BadParameter(f"unknown parts {sorted(unknown)}", param_hint="--parts")
    results = {}
    for name, run in (("suite", lambda: scaling_bench.suite_wall(config, workers, days)),
                      ("preferences", lambda: scaling_bench.preference_wall(config, workers, cases))):
        if name in wanted:
            r = results[name] = run()
            out.print(f"{name}: serial {r['serial_s']:.1f} s ({r['serial_threads']} torch threads) vs {r['workers']} workers x "
                      f"{r['threads_per_worker']} thread(s) {r['dask_s']:.1f} s: speed-up {r['speed_up']:.2f}x "
                      f"({', '.join(f'{k} {v}' for k, v in r.items() if k in ('campaigns', 'cycles', 'cases', 'pairs'))})")
    if "verification" in wanted:
        rows = results["verification"] = scaling_bench.verification_memory(tuple(_parse_ints(lengths, "--lengths")))
        _print_table("archive verification: peak memory (fresh process per row; MiB above the imports' baseline)",
                     ("cycles", "read", "added MiB", "peak MiB", "seconds"),
                     [(r["cycles"], r["read"], f"{r['added_mib']:.0f}", f"{r['peak_mib']:.0f}", f"{r['seconds']:.1f}")
                      for r in rows])
    if json_out:
        json_out.write_text(json.dumps(results, indent=1))


@bench_app.command("training-data")
def bench_training_data(
    config: Path = typer.Argument(Path("config/tiny.yaml"), help="Experiment config whose schema and split are scaled."),
    factors: str = typer.Option("1,8", help="Training-split sizes, as multiples of the config's."),
    loader_workers: int = typer.Option(0, "--loader-workers", min=0, help="DataLoader worker processes."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the measurements here."),
):
    """Peak memory of one epoch of the forecast trainer's data pipeline as the training data grows: streamed
    from the store (what the trainers do) vs the whole split loaded (before); a fresh process per row."""
    import json

    from align_da_ops.data import streaming_bench
    from align_da_ops.diffusion.commands import _parse_ints

    result = streaming_bench.run(config, tuple(_parse_ints(factors, "--factors")), workers=loader_workers)
    _print_table(f"{result['config']}: one training epoch (batch {result['batch_size']}, rollout "
                 f"{result['rollout_steps']}, {result['workers']} loader workers)",
                 ("data", "pipeline", "states", "split MiB", "baseline MiB", "peak MiB", "seconds"),
                 [(f"{r['factor']}x", r["pipeline"], r["states"], f"{r['split_mib']:.0f}", f"{r['baseline_rss_mib']:.0f}",
                   f"{r['peak_rss_mib']:.0f}", f"{r['seconds']:.1f}") for r in result["rows"]])
    if json_out:
        json_out.write_text(json.dumps(result, indent=1))


@app.command("pipeline")
def pipeline(
    config: Path = typer.Argument(Path("config/tiny.yaml"), help="Experiment config (an OSSE)."),
    workdir: Optional[Path] = typer.Option(None, help="Where every product goes (default data/<name>/chain)."),
    quick: bool = typer.Option(False, help="Seconds-long trainings (a smoke run of the mechanics, not skilful models)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
):
    """The whole chain: nature run -> forecast model -> autoencoder -> prior -> preferences -> DPO -> cycling."""
    import torch

    from align_da_ops.config import load_config
    from align_da_ops.pipeline import ChainSettings, run_chain

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    result = run_chain(config, cfg, workdir or Path("data") / cfg.name / "chain",
                       ChainSettings.quick() if quick else ChainSettings(), quick=quick, say=lambda m: out.print(f"[bold]{m}[/bold]"))
    _print_scores({"align-dps-m (chain)": result["scores"]}, (24, 48))
    out.print(f"products in {result['paths']['archive'].parent}; campaign {result['campaign']}")


def _print_mapping(title: str, mapping: dict) -> None:
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value")
    for k, v in mapping.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out.print(table)


def _usage_error_types() -> tuple[type, ...]:
    """Click's exception base, and typer's own copy of it (typer >= 0.29 vendors click)."""
    types: list[type] = []
    vendored = getattr(getattr(typer, "_click", None), "exceptions", None)
    if vendored is not None:
        types.append(vendored.ClickException)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except AlignDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # usage errors come through here in non-standalone mode
        if isinstance(exc, _usage_error_types()):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
