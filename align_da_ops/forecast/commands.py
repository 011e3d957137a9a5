"""CLI commands of the neural forecast model (`align-da train forecast`, `align-da bench forecast`).

Registered by `align_da_ops.cli`; heavy imports live inside the commands so
that `align-da --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from align_da_ops.progress import progress_bar

out = Console(width=None if sys.stdout.isatty() else 140)


def default_checkpoint(experiment_name: str) -> Path:
    """Where `train forecast` writes by default (relative to the working directory)."""
    return Path("data") / experiment_name / "neural-forecast.pt"


def train_forecast(
    config: Path,
    epochs: int = typer.Option(22, help="Total epochs (a resumed run continues up to this)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoint (.pt); resumed if it exists. Default: data/<name>/neural-forecast.pt."),
    rollout_steps: int = typer.Option(4, help="6-h steps in the loss (multi-step rollout loss when > 1)."),
    rollout_from_epoch: int = typer.Option(16, help="Epochs of single-step loss before the rollout loss starts."),
    batch_size: int = typer.Option(8, help="Samples per optimiser step (all torchrun processes together)."),
    lr: float = typer.Option(1.5e-3, help="Peak learning rate (AdamW, cosine decay)."),
    width: int = typer.Option(64, help="Hidden channels at full resolution (multiple of 8)."),
    blocks: int = typer.Option(2, help="Residual blocks per U-Net stage."),
    levels: int = typer.Option(1, help="2x poolings (U-Net depth); add one per doubling of resolution."),
    seed: int = typer.Option(0, help="Initialisation and shuffling seed."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
    workers: int = typer.Option(0, help="DataLoader worker processes reading the store (per torchrun process)."),
    start_covariance: Optional[Path] = typer.Option(None, help="B (.npz, e.g. align_da_ops/checkpoints/b-nmc-neural-tiny.npz): "
                                                    "start a share of the windows from the truth plus B-structured errors, like analyses."),
    start_scale: float = typer.Option(1.0, help="Start perturbation std in units of B^1/2."),
    start_fraction: float = typer.Option(0.5, help="Share of windows with a perturbed start."),
    export: Optional[Path] = typer.Option(None, help="Also write an inference-only copy here (no optimiser state)."),
):
    """Train (or resume) the neural 6-h forecast model on the config's train split; validate per epoch.

    Data-parallel on several processes when launched by torchrun
    (`torchrun --standalone --nproc_per_node N -m align_da_ops.cli train forecast ...`); rank 0 writes.
    """
    import torch

    from align_da_ops import parallel_training
    from align_da_ops.config import load_config
    from align_da_ops.devices import resolve_device
    from align_da_ops.forecast import checkpoint as ckpt_io
    from align_da_ops.forecast.training import TrainSettings, train

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    target = output or default_checkpoint(cfg.name)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, rollout_steps=rollout_steps,
                             rollout_from_epoch=rollout_from_epoch,
                             width=width, blocks=blocks, levels=levels, seed=seed,
                             start_covariance=str(start_covariance) if start_covariance else None,
                             start_scale=start_scale, start_fraction=start_fraction)
    with parallel_training.launch(resolve_device(cfg.device)) as world:
        if not world.is_main:
            train(cfg, target, settings, world=world, workers=workers)
            return
        with progress_bar("epoch") as bar:

            def on_step(epoch, i, n, loss):
                bar(i, n, f"epoch {epoch + 1}/{epochs} loss {loss:.3f}")

            def on_epoch(r):
                bar.print(
                    f"epoch {r['epoch']:3d}  loss {r['loss']:.4f}  val WRMSE z500 {r['z500_6h']:.1f}/{r['z500_24h']:.1f} m²/s²"
                    f"  t850 {r['t850_6h']:.3f}/{r['t850_24h']:.3f} K (6/24 h)  {r['seconds']:.1f} s"
                )

            history = train(cfg, target, settings, on_step=on_step, on_epoch=on_epoch, world=world, workers=workers)
    ckpt = ckpt_io.read(target)
    out.print(f"wrote {target} (hash {ckpt['content_hash']}, {len(history)} epochs, {sum(r['seconds'] for r in history):.0f} s)")
    if export is not None:
        out.print(f"exported {export} (hash {ckpt_io.strip_training(target, export)})")


def bench_forecast(
    config: Path,
    checkpoint: Optional[Path] = typer.Option(None, help="Neural checkpoint (default: the packaged one for this config)."),
    every_hours: int = typer.Option(12, help="Hours between forecast starts in the test split."),
    dynamical: bool = typer.Option(True, help="Include the dynamical core (perfect-model reference)."),
    perturbation: float = typer.Option(0.1, help="Dynamical core start: truth + noise of this x the 6-h increment std."),
    leads: str = typer.Option("6,24,48", help="Forecast leads (h), e.g. 6,24,48,120."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
):
    """WRMSE on the test split at each lead: neural vs persistence, climatology, dynamical core; timing; 10-day check."""
    import torch

    from align_da_ops import grid
    from align_da_ops.config import load_config
    from align_da_ops.data import nature_run as nr
    from align_da_ops.data.sources import layout_of, open_states
    from align_da_ops.errors import ConfigError
    from align_da_ops.evaluation import climatology_of
    from align_da_ops.forecast import benchmark
    from align_da_ops.forecast.base import Persistence
    from align_da_ops.forecast.checkpoint import load_model, shipped_checkpoint
    from align_da_ops.forecast.dynamical import DynamicalCoreModel

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    layout, states = layout_of(cfg), open_states(cfg)
    path = checkpoint or shipped_checkpoint(cfg.name)
    neural = load_model(path, layout.channels, cfg.state.grid.nlat, cfg.state.grid.nlon)
    train = cfg.splits.train
    models = {"neural": neural, "persistence": Persistence(),
              "climatology": benchmark.Climatology(climatology_of(states, layout, train.start, train.end))}
    if dynamical:
        if cfg.nature_run is None:
            raise ConfigError("the dynamical-core reference needs the config's nature_run block (or --no-dynamical)")
        models["dynamical_core"] = DynamicalCoreModel(nr.build_core(cfg.nature_run, torch.device("cpu")), layout)
    from align_da_ops.diffusion.commands import _parse_ints

    scores = benchmark.bench(models, states, layout, cfg.splits.test, every_hours, tuple(_parse_ints(leads, "--leads")),
                             perturbed=("dynamical_core",), amplitude=perturbation)
    test = cfg.splits.test
    table = Table(title=f"WRMSE on the test split {test.start:%Y-%m-%d} .. {test.end:%Y-%m-%d} (every {every_hours} h; "
                        f"z500 m²/s², t850 K, u/v500 m/s); checkpoint {path.name} {neural.content_hash}")
    for col in ("model", "lead", "z500", "t850", "u500", "v500"):
        table.add_column(col)
    for name, rows in scores.items():
        for lead, row in rows.items():
            table.add_row(name, f"+{lead} h", *[f"{row[k]:.3f}" if k == "t850" else f"{row[k]:.2f}" for k in ("z500", "t850", "u500", "v500")])
    out.print(table)
    behind = benchmark.losses_to(scores)
    out.print("neural beats persistence and climatology at every lead and variable: "
              + ("[green]yes[/green]" if not behind else f"[red]no[/red] ({', '.join(behind)})"))
    state = layout.to_tensor(states.isel({grid.TIME: 0}).load())[0][None]
    timing = benchmark.timings(neural, state, models.get("dynamical_core"))
    ttable = Table(title=f"seconds per 6-h step (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    for col in ("model", "device", "members", "s / step", "s / step / member"):
        ttable.add_column(col)
    for name, dev, n, sec in timing:
        ttable.add_row(name, dev, str(n), f"{sec:.4f}", f"{sec / n:.4f}")
    out.print(ttable)
    check = benchmark.long_rollout_check(neural, states, layout, states[grid.LAT].values, test.start)
    verdict = "[green]ok[/green]" if check["ok"] else "[red]FAILED[/red]"
    out.print(f"10-day rollout from {test.start:%Y-%m-%d %H}Z: finite={check['finite']}, kinetic energy {check['ke_model']:.1f} "
              f"vs nature run {check['ke_truth']:.1f} m²/s² (ratio {check['ke_ratio']:.3f}, tolerance 25 %) {verdict}")
