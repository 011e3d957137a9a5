"""CLI command of the latent autoencoder (`align-da train autoencoder`).

Registered by `align_da_ops.cli`; heavy imports live inside the command so that
`align-da --help` stays fast.
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
PAPER_MSE = 0.0067  # Align-DA's autoencoder reconstruction MSE on ERA5, normalised units (Sun et al. 2025)


def default_checkpoint(experiment_name: str) -> Path:
    """Where `train autoencoder` writes by default (relative to the working directory)."""
    return Path("data") / experiment_name / "autoencoder.pt"


def train_autoencoder(
    config: Path,
    epochs: int = typer.Option(60, help="Total epochs (a resumed run continues up to this)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoint (.pt); resumed if it exists. Default: data/<name>/autoencoder.pt."),
    latent_channels: int = typer.Option(128, help="Channels of the latent grid."),
    downsampling: int = typer.Option(4, help="Down-sampling factor per horizontal axis (1, 2, 4 or 8)."),
    width: int = typer.Option(32, help="Hidden channels at full resolution (multiple of 8, doubled per 2x stage)."),
    blocks: int = typer.Option(1, help="Residual blocks per stage."),
    batch_size: int = typer.Option(8, help="Samples per optimiser step (all torchrun processes together)."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (AdamW, cosine decay)."),
    seed: int = typer.Option(0, help="Initialisation, shuffling and augmentation seed."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
    workers: int = typer.Option(0, help="DataLoader worker processes reading the store (per torchrun process)."),
    export: Optional[Path] = typer.Option(None, help="Also write an inference-only copy here (no optimiser state)."),
):
    """Train (or resume) the latent autoencoder on the config's train split; validate per epoch; score val/test.

    Data-parallel on several processes when launched by torchrun
    (`torchrun --standalone --nproc_per_node N -m align_da_ops.cli train autoencoder ...`); rank 0 writes.
    """
    import torch

    from align_da_ops import parallel_training
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import layout_of
    from align_da_ops.devices import resolve_device
    from align_da_ops.latent import checkpoint as ckpt_io
    from align_da_ops.latent import training

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    target = output or default_checkpoint(cfg.name)
    settings = training.AutoencoderSettings(
        epochs=epochs, batch_size=batch_size, lr=lr, latent_channels=latent_channels, downsampling=downsampling,
        width=width, blocks=blocks, seed=seed,
    )
    with parallel_training.launch(resolve_device(cfg.device)) as world:
        if not world.is_main:
            training.train_autoencoder(cfg, target, settings, world=world, workers=workers)
            return
        with progress_bar("epoch") as bar:

            def on_step(epoch, i, n, loss):
                bar(i, n, f"epoch {epoch + 1}/{epochs} loss {loss:.4f}")

            def on_epoch(r):
                bar.print(f"epoch {r['epoch']:3d}  loss {r['loss']:.5f}  val MSE {r['val_mse']:.5f}  "
                          f"MAE {r['val_mae']:.5f} (normalised)  {r['seconds']:.1f} s")

            history = training.train_autoencoder(cfg, target, settings, on_step=on_step, on_epoch=on_epoch, world=world,
                                                 workers=workers)
    ckpt = ckpt_io.read(target)
    out.print(f"wrote {target} (hash {ckpt['content_hash']}, {len(history)} epochs, {sum(r['seconds'] for r in history):.0f} s)")
    if export is not None:
        out.print(f"exported {export} (hash {ckpt_io.strip_training(target, export)})")
    model = ckpt_io.load_autoencoder(target, device=world.device)
    scores = training.split_scores(cfg, model)
    _print_scores(scores, layout_of(cfg), model.latent_shape(cfg.state.grid.nlat, cfg.state.grid.nlon))


def _print_scores(scores: dict, layout, latent_shape) -> None:
    from align_da_ops.latent.training import by_variable

    table = Table(title=f"reconstruction error (normalised units, latitude-weighted, mean over levels); latents {latent_shape}")
    table.add_column("variable")
    for split in scores:
        table.add_column(f"{split} MSE", justify="right")
        table.add_column(f"{split} MAE", justify="right")
    grouped = {split: {k: by_variable(v[k], layout) for k in ("mse", "mae")} for split, v in scores.items()}
    for name in layout.upper_air + layout.surface:
        table.add_row(name, *[f"{grouped[s][k][name]:.5f}" for s in scores for k in ("mse", "mae")])
    table.add_row("all channels", *[f"{float(scores[s][k].mean()):.5f}" for s in scores for k in ("mse", "mae")])
    out.print(table)
    overall = "  ".join(f"{s} {float(v['mse'].mean()):.5f}" for s, v in scores.items())
    out.print(f"overall reconstruction MSE (mean over channels): {overall} (Align-DA on ERA5: {PAPER_MSE})")
