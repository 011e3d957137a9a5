"""`align-da obs …` and `align-da bench obs`: thin commands over the obs package (heavy imports inside)."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from align_da_ops.errors import ObservationError, StoreError

obs_app = typer.Typer(no_args_is_help=True, help="Observations: decode and QC real files, simulate synthetic networks.")
out = Console(width=None if sys.stdout.isatty() else 140)
NETWORK_KINDS = ("random_mask", "stations", "swath")


def _table(title: str, rows: list[dict], formats: dict[str, str] | None = None) -> Table:
    table = Table(title=title)
    if not rows:
        table.add_column("(none)")
        return table
    formats = formats or {}
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*(format(v, formats.get(k, "")) if isinstance(v, float) else str(v) for k, v in r.items()))
    return table


def _print_batch_summary(batch) -> None:
    from align_da_ops.obs.batch import summary_table

    rows = summary_table(batch).to_dict("records")
    out.print(_table("observations by type and variable", rows, {"min": ".6g", "max": ".6g"}))
    counts = {k: v for k, v in batch.flag_counts().items() if v}
    out.print(
        "QC flags: " + ", ".join(f"{k}={v}" for k, v in counts.items()) if counts else "QC flags: (no observations)"
    )


@obs_app.command("ingest")
def ingest(
    files: list[Path] = typer.Argument(..., help="BUFR files to decode."),
    output: Path = typer.Option(Path("obs.ioda.nc"), "--output", "-o", help="IODA-style NetCDF to write."),
    cycle: datetime | None = typer.Option(None, help="Cycle time: flag obs outside its window."),
    window_hours: float = typer.Option(3.0, help="Half-width of the window around --cycle (hours)."),
    thin_km: float | None = typer.Option(None, help="Thinning box size (km) for AMVs, aircraft, swaths."),
    blacklist: list[str] = typer.Option([], help="Station ids to blacklist (repeatable)."),
):
    """Decode BUFR files, quality-control them, write one IODA-style NetCDF and print a summary."""
    from align_da_ops.obs.batch import ObsBatch
    from align_da_ops.obs.bufr import decode_bufr_file
    from align_da_ops.obs.config import QCConfig
    from align_da_ops.obs.ioda import write_ioda
    from align_da_ops.obs.qc import run_qc

    decoded = [decode_bufr_file(f) for f in files]
    rows = []
    for d in decoded:
        r = d.report
        reason = r.unusable_reason()
        rows.append(
            {
                "file": Path(r.source).name,
                "messages": r.messages,
                "decoded": r.decoded,
                "failed": r.failed,
                "reports": r.reports,
                "obs": r.observations,
                "status": "unusable: " + reason if reason else ("; ".join(r.problems[:2]) or "ok"),
            }
        )
    out.print(_table("decoding", rows))
    usable = [d.batch for d in decoded if d.report.unusable_reason() is None]
    if not usable:
        raise ObservationError(f"none of the {len(files)} files holds usable BUFR observations")
    qc_config = QCConfig(
        window_half_width=timedelta(hours=window_hours), thinning_km=thin_km, blacklist_stations=tuple(blacklist)
    )
    batch = run_qc(ObsBatch.concat(usable), qc_config, cycle=cycle)
    _write_output(write_ioda, batch, output, {"source_files": " ".join(Path(f).name for f in files)})
    _print_batch_summary(batch)
    out.print(f"wrote {output} ({len(batch)} observations, {int(batch.passed.sum())} pass QC)")


def _network_config(
    kinds: list[str], fraction: float, gross: float, missing: float, noise: bool, config: Path | None
):
    import yaml

    from align_da_ops.obs.config import ObservationsConfig

    if config is not None:
        try:
            raw = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ObservationError(f"cannot read observations config {config}: {exc}") from None
        return ObservationsConfig.model_validate(raw.get("observations", raw))
    unknown = [k for k in kinds if k not in NETWORK_KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown network(s) {unknown}; choose from {NETWORK_KINDS}")
    common = {"gross_error_rate": gross, "missing_rate": missing, "noise": noise}
    nets = [{"kind": k, **common, **({"fraction": fraction} if k == "random_mask" else {})} for k in kinds]
    return ObservationsConfig.model_validate({"networks": nets})


@obs_app.command("simulate")
def simulate_cmd(
    store: Path = typer.Argument(..., help="Nature-run (truth) Zarr store."),
    network: list[str] = typer.Option(
        ["random_mask"], "--network", "-n", help=f"Network kind, repeatable: {', '.join(NETWORK_KINDS)}."
    ),
    cycle: datetime | None = typer.Option(None, help="Cycle time (default: the store's second time)."),
    output: Path = typer.Option(Path("synthetic.ioda.nc"), "--output", "-o", help="IODA-style NetCDF to write."),
    fraction: float = typer.Option(0.01, help="Grid-point fraction for random_mask (paper: 0.01-0.10)."),
    gross_error_rate: float = typer.Option(0.0, help="Fraction of obs with a gross error."),
    missing_rate: float = typer.Option(0.0, help="Fraction of reports missing."),
    noise: bool = typer.Option(True, help="Add observation noise (--no-noise: perfect obs)."),
    experiment: str = typer.Option("osse", help="Experiment name (seeds the draw, with --seed)."),
    seed: int = typer.Option(0, help="Seed of the draw (a campaign's `seed`)."),
    member: int = typer.Option(0, help="Nature-run member used as truth."),
    config: Path | None = typer.Option(
        None, help="YAML with an `observations:` block (overrides the network options)."
    ),
):
    """Draw a synthetic observation batch from a nature run, run the QC that needs no background, write it."""
    import numpy as np
    from pydantic import ValidationError

    from align_da_ops.data.nature_run import open_nature_run
    from align_da_ops.errors import ConfigError
    from align_da_ops.obs.ioda import write_ioda
    from align_da_ops.obs.networks import Truth, simulate
    from align_da_ops.obs.operators import GridInterpolator
    from align_da_ops.obs.qc import run_qc

    try:
        cfg = _network_config(network, fraction, gross_error_rate, missing_rate, noise, config)
    except ValidationError as exc:
        raise ConfigError(f"invalid observation settings: {exc}") from None
    if not store.exists():
        raise ObservationError(f"nature-run store {store} does not exist")
    ds = open_nature_run(store)
    times = ds["time"].values
    when = np.datetime64(cycle, "ns") if cycle is not None else times[min(1, len(times) - 1)]
    if when < times[0] or when > times[-1]:
        raise ObservationError(f"cycle {when} is outside the store's times {times[0]} .. {times[-1]}")
    pad = np.timedelta64(int(cfg.qc.window_half_width.total_seconds()) + 6 * 3600, "s")
    truth = Truth.from_dataset(ds.sel(time=slice(when - pad, when + pad)).load(), member=member)
    draw = simulate(cfg, truth, when, experiment=experiment, seed=seed)
    op = GridInterpolator(truth.layout, truth.latitudes, truth.longitudes)
    batch = run_qc(draw.batch, cfg.qc, cycle=when, operator=op)
    attrs = {"experiment": experiment, "seed": seed, "cycle": str(np.datetime64(when, "s")), "nature_run": str(store)}
    _write_output(write_ioda, batch, output, attrs)
    _print_batch_summary(batch)
    out.print(f"wrote {output} ({len(batch)} observations, {int(draw.gross.sum())} with injected gross errors)")


def bench_obs(
    files: list[Path] = typer.Argument(
        None, help="BUFR files (default: tests/data/bufr/*.bufr under the working directory)."
    ),
    n_obs: int = typer.Option(100_000, help="Observations for the H benchmark."),
    nlat: int = typer.Option(128, help="Latitudes of the H benchmark grid (longitudes: 2 x nlat)."),
    members: int = typer.Option(1, help="Ensemble members H is applied to at once."),
    repeats: int = typer.Option(5, help="Timings per measurement (best is reported)."),
):
    """Decode throughput (reports/s) on BUFR files; H throughput on CPU and, when present, CUDA."""
    import torch

    from align_da_ops.obs.bench import bench_decode, bench_operator

    files = list(files or sorted(Path("tests/data/bufr").glob("*.bufr")))
    if not files:
        raise ObservationError("no BUFR files given and none under tests/data/bufr")
    rows = bench_decode(files, repeats=max(1, min(repeats, 3)))
    out.print(
        _table("BUFR decoding (best of 3)", rows, {"seconds": ".4f", "reports_per_s": ",.0f", "obs_per_s": ",.0f"})
    )
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    op_rows = bench_operator(devices, n_obs=n_obs, nlat=nlat, nlon=2 * nlat, members=members, repeats=repeats)
    title = f"observation operator H (torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32)"
    fmts = {
        "prepare_s": ".4f",
        "apply_s": ".5f",
        "apply_backward_s": ".5f",
        "obs_per_s": ",.0f",
        "speedup_vs_first": ".2f",
    }
    out.print(_table(title, op_rows, fmts))


def _write_output(write, batch, output: Path, attrs: dict) -> None:
    """`write(batch, output, attrs)`, an OS failure (permission, disk full, bad name) made a `StoreError` (exit 5)."""
    try:
        write(batch, output, attrs)
    except (OSError, RuntimeError) as exc:  # netCDF-C reports some write failures as RuntimeError
        problem = getattr(exc, "strerror", None) or str(exc)
        raise StoreError(f"cannot write {output}: {problem}") from None
