"""`align-da`: the command-line entry point. Maps AlignDAError subclasses to exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

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
app.add_typer(bench_app, name="bench")
from align_da_ops.obs.cli import bench_obs, obs_app  # noqa: E402  (light: heavy imports live inside the commands)

app.add_typer(obs_app, name="obs")
bench_app.command("obs")(bench_obs)
out = Console(width=None if sys.stdout.isatty() else 140)


@app.callback()
def _main(
    log_format: logs.LogFormat = typer.Option("console", help="console for people, json for services."),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
):
    logs.configure(log_format, log_level)


# -- config -------------------------------------------------------------------------
@config_app.command("validate")
def config_validate(path: Path):
    """Check a config file; exit code 2 and the offending fields if it is invalid."""
    cfg = load_config(path)
    out.print(f"[green]ok[/green] {path} ({cfg.name}, hash {config_hash(cfg)})")


@config_app.command("show")
def config_show(path: Path):
    """Print the resolved config (all defaults filled in) as JSON, with its stable hash."""
    cfg = load_config(path)
    print(json.dumps({"hash": config_hash(cfg), "config": resolved(cfg)}, indent=2))


# -- nature run -----------------------------------------------------------------------
@app.command("nature-run")
def nature_run(
    config: Path,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Zarr store (default: nature_run.output)."),
):
    """Generate (or resume) the OSSE nature run into a Zarr store, then check its climate."""
    from rich.progress import Progress

    from align_da_ops.data import nature_run as nr
    from align_da_ops.data.plausibility import check_report, climate_report

    cfg = load_config(config)
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("nature run", total=None)
        store = nr.generate(cfg, output, on_chunk=lambda done, total: bar.update(task, completed=done, total=total))
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
    result = sources.compute_normalization(sources.open_states(cfg), layout, train.start, train.end)
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
    path: Path,
    variable: Optional[str] = typer.Option(None, "--var", help="Variable to map (ERA5/WB2 name)."),
    level: Optional[int] = typer.Option(None, help="Pressure level (hPa) for upper-air variables."),
    time_index: int = typer.Option(0, "--time", help="Time index (negative counts from the end)."),
    member: int = typer.Option(0, help="Member (trajectory) index."),
    png: Optional[Path] = typer.Option(None, help="Write a PNG map of --var here."),
):
    """Summarise a state store (Zarr or GRIB); optionally write a PNG map of one field."""
    from align_da_ops.inspection import open_any, select_map, summary, write_map_png

    ds = open_any(path)
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
        title = f"{variable}{f' {level} hPa' if level else ''} {when}"
        out.print(f"wrote {write_map_png(da, png, title)}")


# -- bench -------------------------------------------------------------------------------
@bench_app.command("nature-run")
def bench_nature_run(
    truncations: str = typer.Option("21,42", help="Comma-separated truncations (21, 42, 85)."),
    hours: float = typer.Option(24.0, help="Simulated hours per timing."),
    members: int = typer.Option(1, help="Trajectories stepped in one batch."),
    cpu_threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
):
    """Seconds per simulated 6 h of the Held–Suarez core, on CPU and on CUDA when present."""
    import torch

    from align_da_ops.bench import bench_nature_run as run

    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    rows = run(tuple(int(t) for t in truncations.split(",")), devices, hours=hours, members=members)
    table = Table(title=f"nature-run core: seconds per simulated 6 h (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    for col in ("device", "grid", "dt (min)", "members", "s / 6 h", "s / 6 h / member", "ratio"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["device"], r["grid"], f"{r['dt_min']:g}", str(r["members"]), f"{r['s_per_6h']:.3f}", f"{r['s_per_6h_per_member']:.3f}", f"{r['ratio_to_first']:.2f}")
    out.print(table)


def _print_mapping(title: str, mapping: dict) -> None:
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value")
    for k, v in mapping.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out.print(table)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except AlignDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
