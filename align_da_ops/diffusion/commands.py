"""CLI commands of the latent prior (`align-da train prior`, `align-da bench sampler`).

Registered by `align_da_ops.cli`; heavy imports live inside the commands.
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


def default_prior(experiment_name: str) -> Path:
    return Path("data") / experiment_name / "prior.pt"


def _parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers; got {text!r}") from None
    return values


def _check_dit(settings, latent_shape) -> None:
    from align_da_ops.diffusion.dit import check_shape
    from align_da_ops.diffusion.network import PriorArchitecture

    arch = PriorArchitecture(latent_shape[0], kind="dit", hidden=settings.hidden, depth=settings.depth,
                             heads=settings.heads, patch=settings.patch)
    try:
        check_shape(arch, *latent_shape[1:])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--patch/--hidden/--heads") from None


def train_prior(
    config: Path,
    epochs: int = typer.Option(150, help="Total epochs (a resumed run continues up to this)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Checkpoint; resumed if it exists. Default: data/<name>/prior.pt."),
    autoencoder: Optional[Path] = typer.Option(None, help="Autoencoder checkpoint (default: the packaged one)."),
    forecast: Optional[Path] = typer.Option(None, help="Neural forecast checkpoint making the backgrounds (default: packaged)."),
    leads: str = typer.Option("6,12,24,36,48,72", help="Background leads in hours (comma-separated multiples of 6)."),
    batch_size: int = typer.Option(32, help="Pairs per optimiser step (all torchrun processes together)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, cosine decay)."),
    architecture: str = typer.Option("unet", help="Prior network: unet (--width, --blocks, --levels) or dit (the "
                                     "paper's transformer with cross-attention to the background: --hidden, --depth, "
                                     "--heads, --patch)."),
    width: int = typer.Option(64, help="U-Net: hidden channels at latent resolution (multiple of 8)."),
    blocks: int = typer.Option(2, help="U-Net: residual blocks per level."),
    levels: int = typer.Option(1, help="U-Net: 2x poolings of the latent grid."),
    hidden: int = typer.Option(128, help="DiT: token features (a multiple of 2 x --heads)."),
    depth: int = typer.Option(4, help="DiT: transformer blocks."),
    heads: int = typer.Option(4, help="DiT: attention heads."),
    patch: int = typer.Option(2, help="DiT: patch size on the latent grid (divides its rows and columns)."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
    workers: int = typer.Option(0, help="DataLoader worker processes reading the pairs (per torchrun process)."),
    export: Optional[Path] = typer.Option(None, help="Also write an inference-only copy here."),
    from_archive: list[Path] = typer.Option([], "--from-archive", help="Cycling archive whose backgrounds and the truth "
                                            "make pairs (repeatable): its done cycles in the train and validation "
                                            "splits, on their trajectories; never the test period."),
    forecast_pairs: Optional[bool] = typer.Option(None, "--forecast-pairs/--no-forecast-pairs", help="Also train on "
                                                  "truth-started forecasts at --leads (default: only without --from-archive)."),
    init: Optional[Path] = typer.Option(None, help="Start from this prior's weights (fine-tuning; its architecture is kept)."),
):
    """Train (or resume) the background-conditioned latent prior by denoising score matching.

    Pairs are (background, truth): by default the forecast model's forecasts of the nature run at --leads;
    with --from-archive the backgrounds that cycling campaigns archived (the errors the prior meets while
    cycling), with --forecast-pairs both.

    Data-parallel on several processes when launched by torchrun
    (`torchrun --standalone --nproc_per_node N -m align_da_ops.cli train prior ...`); rank 0 writes.
    """
    import torch

    from align_da_ops import checkpoint_io, parallel_training
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import layout_of
    from align_da_ops.devices import resolve_device
    from align_da_ops.diffusion import checkpoint as prior_io
    from align_da_ops.diffusion.network import KINDS
    from align_da_ops.diffusion.training import PriorSettings
    from align_da_ops.diffusion.training import train_prior as run
    from align_da_ops.forecast.checkpoint import load_model
    from align_da_ops.forecast.checkpoint import shipped_checkpoint as shipped_forecast
    from align_da_ops.latent.checkpoint import load_autoencoder, shipped_checkpoint

    if architecture not in KINDS:
        raise typer.BadParameter(f"unknown architecture {architecture!r}; use one of {KINDS}", param_hint="--architecture")
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    layout = layout_of(cfg)
    nlat, nlon = cfg.state.grid.nlat, cfg.state.grid.nlon
    settings = PriorSettings(epochs=epochs, batch_size=batch_size, lr=lr, kind=architecture, width=width, blocks=blocks,
                             levels=levels, hidden=hidden, depth=depth, heads=heads, patch=patch,
                             leads=_parse_ints(leads, "--leads"), seed=seed)
    target = output or default_prior(cfg.name)
    use_forecasts = not from_archive if forecast_pairs is None else forecast_pairs
    if not use_forecasts and not from_archive:
        raise typer.BadParameter("no training pairs: --no-forecast-pairs needs --from-archive", param_hint="--forecast-pairs")
    pair_options = {"archives": tuple(from_archive), "forecast_pairs": use_forecasts, "init": init}
    with parallel_training.launch(resolve_device(cfg.device)) as world:
        ae = load_autoencoder(autoencoder or shipped_checkpoint(cfg.name), layout.channels, nlat, nlon, world.device)
        if architecture == "dit" and init is None:
            _check_dit(settings, ae.latent_shape(nlat, nlon))
        model = load_model(forecast or shipped_forecast(cfg.name), layout.channels, nlat, nlon, world.device)
        if not world.is_main:
            run(cfg, target, ae, model, settings, world=world, workers=workers, **pair_options)
            return
        with progress_bar("epoch") as bar:

            def on_step(epoch, i, n, loss):
                bar(i, n, f"epoch {epoch + 1}/{epochs} loss {loss:.4f}")

            def on_epoch(r):
                if r["epoch"] % 10 == 0 or r["epoch"] == epochs:
                    bar.print(f"epoch {r['epoch']:4d}  loss {r['loss']:.4f}  validation {r['val_loss']:.4f}  {r['seconds']:.1f} s")

            history = run(cfg, target, ae, model, settings, on_step=on_step, on_epoch=on_epoch, world=world, workers=workers,
                          **pair_options)
    ckpt = prior_io.read(target)
    counts = ckpt["lineage"]["pairs"]["counts"]
    out.print("pairs: " + "; ".join(f"{split} " + ", ".join(f"{n} from {k}" for k, n in c.items()) for split, c in counts.items()))
    out.print(f"wrote {target} (hash {ckpt['content_hash']}, autoencoder {ckpt['autoencoder']}, {len(history)} epochs, "
              f"{sum(r['seconds'] for r in history):.0f} s; validation DSM loss {history[-1]['val_loss']:.4f})")
    if export is not None:
        out.print(f"exported {export} (hash {checkpoint_io.strip_training(ckpt, export)})")


def bench_sampler(
    config: Path = typer.Argument(Path("config/tiny.yaml"), help="Experiment config whose packaged models are timed."),
    steps: str = typer.Option("4,8,16,32,64,128", help="Sampler steps to time."),
    members: str = typer.Option("1,8,32", help="Ensemble sizes to time."),
    corrections: int = typer.Option(0, help="Langevin corrections per step."),
    guidance: str = typer.Option("obs_free,dps", help="Guidance modes (obs_free, repaint, dps; dps:gaussian = DPS with "
                                 "the scalar-Jacobian shortcut of the earlier results)."),
    paper_scale: bool = typer.Option(False, help="Also time the paper's scale with random weights (on the GPU if present)."),
    paper_only: bool = typer.Option(False, help="Time only the paper-scale set-up (no packaged models, no quality)."),
    paper_grid: str = typer.Option("128x256x69", help="Paper-scale grid NLATxNLONxCHANNELS (smaller for dry runs)."),
    dtype: str = typer.Option("fp32", help="Precisions to time: fp32, bf16 (autocast), comma-separated."),
    compile_nets: bool = typer.Option(False, "--compile", help="torch.compile the paper-scale networks."),
    flops: bool = typer.Option(False, help="Also count each analysis's FLOPs (torch's counter) and the achieved TFLOP/s."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every timed row here (JSON)."),
    profile: Optional[Path] = typer.Option(None, help="Write a torch.profiler summary of one paper-scale analysis here."),
    quality: bool = typer.Option(True, help="Also score DPS analyses against the truth per sampler (held-out cases)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
    prior: Optional[Path] = typer.Option(None, help="Prior checkpoint to time and score (default: the packaged one)."),
):
    """Seconds per analysis against network evaluations and ensemble size (1 % random-mask observations)."""
    import json

    import torch

    from align_da_ops.diffusion import benchmark

    if threads:
        torch.set_num_threads(threads)
    steps_list, members_list = _parse_ints(steps, "--steps"), _parse_ints(members, "--members")
    modes = tuple(guidance.split(","))
    dtypes = tuple(d.strip() for d in dtype.split(","))
    if bad := [d for d in dtypes if d not in benchmark.DTYPES]:
        raise typer.BadParameter(f"unknown precision {bad}; use {sorted(benchmark.DTYPES)}", param_hint="--dtype")
    try:
        nlat, nlon, channels = (int(x) for x in paper_grid.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{paper_grid!r} is not NLATxNLONxCHANNELS", param_hint="--paper-grid") from None
    setups = [] if paper_only else [benchmark.packaged_setup(config, prior)]
    if paper_scale or paper_only:
        setups.append(benchmark.paper_scale_setup(nlat, nlon, channels, compile=compile_nets))
    all_rows = []
    for setup in setups:
        rows = benchmark.time_sampler(setup, steps_list, members_list, corrections, modes, dtypes, flops)
        all_rows.extend(rows)
        table = Table(title=f"{setup.name}: seconds per analysis ({setup.device}, torch {torch.__version__}, "
                            f"{torch.get_num_threads()} CPU threads, {setup.n_obs} observations)")
        for col in ("guidance", "dtype", "steps", "network evals", "members", "s / analysis", "s / member", "ms / eval",
                    "peak GiB", "TFLOP/s"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["guidance"], r["dtype"], str(r["steps"]), str(r["evaluations"]), str(r["members"]),
                          f"{r['seconds']:.3f}", f"{r['seconds'] / r['members']:.4f}",
                          f"{1000 * r['seconds'] / r['evaluations']:.2f}", f"{r['peak_memory_bytes'] / 2**30:.2f}",
                          f"{r['achieved_tflops']:.2f}" if "achieved_tflops" in r else "")
        out.print(table)
    if profile is not None and setups:
        from align_da_ops.diffusion.samplers import Sampler

        setup = setups[-1]
        profile.write_text(benchmark.profile_summary(setup, Sampler(steps_list[0], corrections), members_list[0],
                                                     modes[-1], dtypes[-1]))
        out.print(f"wrote {profile}")
    if json_out is not None:
        json_out.write_text(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                                        "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                                        "rows": all_rows}, indent=1))
        out.print(f"wrote {json_out}")
    if quality and not paper_only:
        from align_da_ops.diffusion.samplers import PAPER, Sampler

        samplers = [Sampler(k) for k in steps_list if k <= 64] + [Sampler(32, 1), PAPER]
        rows = benchmark.quality_vs_evaluations(config, samplers, next((m for m in modes if m.startswith("dps")), "dps"),
                                                prior_path=prior)
        table = Table(title="DPS analysis quality against network evaluations (6 held-out cases, 48-h backgrounds, "
                            "1 % mask noise-free, 4 members; normalised MSE, z500 WRMSE m²/s²)")
        for col in ("steps", "corrections", "network evals", "mse (norm.)", "z500", "s / analysis"):
            table.add_column(col)
        for r in rows:
            table.add_row(str(r["steps"]), str(r["corrections"]), str(r["evaluations"]), f"{r['mse']:.4f}",
                          f"{r['z500']:.1f}", f"{r['seconds']:.2f}")
        out.print(table)


def bench_prior(
    latent: str = typer.Option("128x8x16", help="Latent shape CZxHxW (the tiny T21 system: 128x8x16)."),
    batch: int = typer.Option(4, help="Latents per network evaluation."),
    width: int = typer.Option(64, help="U-Net width."),
    blocks: int = typer.Option(2, help="U-Net residual blocks per level."),
    levels: int = typer.Option(1, help="U-Net poolings."),
    hidden: str = typer.Option("128", help="DiT token features (comma-separated: one row each)."),
    depth: int = typer.Option(4, help="DiT blocks."),
    heads: int = typer.Option(4, help="DiT heads."),
    patch: int = typer.Option(2, help="DiT patch size."),
    repeats: int = typer.Option(20, help="Timed evaluations (the median is reported)."),
    device: str = typer.Option("cpu", help="torch device."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
):
    """Parameters, forward GFLOPs and milliseconds per evaluation and per training step of the prior networks
    (U-Net and DiT, random weights): the equal-cost comparison of the architectures."""
    import numpy as np
    import torch

    from align_da_ops.diffusion.checkpoint import build_network
    from align_da_ops.diffusion.cost import network_cost
    from align_da_ops.diffusion.network import PriorArchitecture

    if threads:
        torch.set_num_threads(threads)
    try:
        shape = tuple(int(v) for v in latent.lower().split("x"))
        cz, h, w = shape
    except ValueError:
        raise typer.BadParameter(f"{latent!r} is not CZxHxW", param_hint="--latent") from None
    archs = [PriorArchitecture(cz, width, blocks, levels)]
    archs += [PriorArchitecture(cz, kind="dit", hidden=n, depth=depth, heads=heads, patch=patch)
              for n in _parse_ints(hidden, "--hidden")]
    table = Table(title=f"prior network cost: batch {batch} of {cz}x{h}x{w} latents ({device}, "
                        f"{torch.get_num_threads()} CPU threads, median of {repeats})")
    for col in ("architecture", "parameters", "GFLOP / eval", "ms / eval", "ms / training step"):
        table.add_column(col)
    for arch in archs:
        torch.manual_seed(0)
        try:
            net = build_network(arch, np.linspace(-80, 80, h)).to(device)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        c = network_cost(net, shape, batch, repeats)
        spec = {k: v for k, v in arch.to_dict().items() if k not in ("latent_channels", "embedding")}
        label = " ".join(f"{k}={v}" for k, v in spec.items()) if arch.kind == "dit" else "unet " + " ".join(
            f"{k}={v}" for k, v in spec.items())
        table.add_row(label, f"{c['parameters']:,}", f"{c['gflops']:.3f}", f"{c['ms_eval']:.2f}", f"{c['ms_train']:.2f}")
    out.print(table)
