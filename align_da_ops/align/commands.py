"""CLI commands of the alignment (`align-da align`, `align-da bench alignment`).

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

out = Console(width=None if sys.stdout.isatty() else 240)


def default_pairs(experiment_name: str, variant: str) -> Path:
    return Path("data") / experiment_name / f"preferences-{variant}.zarr"


def default_aligned(experiment_name: str, variant: str) -> Path:
    return Path("data") / experiment_name / f"prior-aligned-{variant}.pt"


def _models(cfg, autoencoder: Optional[Path], prior: Optional[Path], forecast: Optional[Path], device):
    from align_da_ops.data.sources import layout_of
    from align_da_ops.diffusion.checkpoint import load_prior, shipped_prior
    from align_da_ops.forecast.checkpoint import load_model
    from align_da_ops.forecast.checkpoint import shipped_checkpoint as shipped_forecast
    from align_da_ops.latent.checkpoint import load_autoencoder, shipped_checkpoint

    layout = layout_of(cfg)
    nlat, nlon = cfg.state.grid.nlat, cfg.state.grid.nlon
    ae = load_autoencoder(autoencoder or shipped_checkpoint(cfg.name), layout.channels, nlat, nlon, device)
    prior_path = prior or shipped_prior(cfg.name)
    model = load_model(forecast or shipped_forecast(cfg.name), layout.channels, nlat, nlon, device)
    return layout, ae, prior_path, load_prior(prior_path, ae.content_hash, device), model


def align_command(
    config: Path,
    variant: str = typer.Option("m", help="Winners/losers: m (top/bottom decile on accuracy, forecast, Geo-Score) or p (Geo-Score top/bottom 5)."),
    loss: str = typer.Option("dpo", help="dpo (Diffusion-DPO) or ipo."),
    beta: float = typer.Option(8000.0, help="Preference temperature (paper 8000); 2x the beta of the reference "
                               "Diffusion-DPO code, whose loss has a factor 0.5 (see align/dpo.py)."),
    lr: float = typer.Option(1e-5, help="Learning rate (paper 1e-5)."),
    steps: int = typer.Option(500, help="Optimiser steps (paper 500)."),
    batch_size: int = typer.Option(32, help="Pairs per step (paper 32)."),
    samples: int = typer.Option(32, help="Candidates drawn per background (paper 32)."),
    sample_steps: int = typer.Option(16, help="Sampler steps for the candidates."),
    lead_hours: int = typer.Option(48, help="Lead of the forecast backgrounds (paper: 48-h forecasts)."),
    every_hours: int = typer.Option(6, help="Hours between backgrounds in the training split."),
    forecast_hours: int = typer.Option(48, help="Lead of the forecast reward (paper: 48 h)."),
    prior: Optional[Path] = typer.Option(None, help="Reference (unaligned) prior; default: the packaged one."),
    autoencoder: Optional[Path] = typer.Option(None, help="Autoencoder; default: the packaged one."),
    forecast: Optional[Path] = typer.Option(None, help="Neural forecast model; default: the packaged one."),
    from_archive: Optional[list[Path]] = typer.Option(None, metavar="ARCHIVE", help="Take backgrounds (and observations) from this "
                                                      "archive's done cycles of the train split instead; repeatable."),
    guidance: Optional[str] = typer.Option(None, help="Candidates: dps (with each cycle's observations, as the analysis; "
                                           "the default with --from-archive) or obs_free (unguided; the default otherwise)."),
    dps_strength: float = typer.Option(1.0, help="DPS strength of the candidates (the analysis' default 1)."),
    dps_jacobian: str = typer.Option("denoiser", help="DPS Jacobian of the candidates: denoiser (the analysis' default) "
                                     "or gaussian."),
    geo_reference: str = typer.Option("climatology", help="Geo-Score's reference imbalance: climatology (the nature "
                                      "run's train-split mean; truth-free) or truth (the truth's at that time, as before)."),
    pairs: Optional[Path] = typer.Option(None, help="Preference data (Zarr); built if missing (a cut-off build resumes from the cases kept in PAIRS.cases). Default data/<name>/preferences-<variant>.zarr."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Aligned prior; default data/<name>/prior-aligned-<variant>.pt."),
    export: Optional[Path] = typer.Option(None, help="Also write an inference-only copy here."),
    seed: int = typer.Option(0, help="Seed of the candidates and the pairing (part of the preference data's identity)."),
    align_seed: Optional[int] = typer.Option(None, min=0, help="Seed of the alignment's minibatches and noise (default: "
                                             "--seed); alignment seeds over one preference store reuse it."),
    workers: int = typer.Option(0, min=0, help="dask workers scoring preference cases side by side (0: one per core, "
                                "at most one per case; 1: in this process). Pairs do not depend on it at equal threads."),
    threads: int = typer.Option(0, min=0, help="torch CPU threads per worker (0: the cores shared out among the workers; "
                                "in-process: torch's choice); also the alignment's threads."),
    scheduler: Optional[str] = typer.Option(None, help="Address of a running dask scheduler instead of a LocalCluster."),
):
    """Build preference pairs from the unaligned prior (if needed) and fine-tune it by Diffusion-DPO/IPO."""
    import torch

    from align_da_ops import checkpoint_io, grid
    from align_da_ops.align import preferences as prefs
    from align_da_ops.align.climatology import climatological_imbalance
    from align_da_ops.align.dpo import AlignSettings, align, summary
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import open_states, training_trajectory
    from align_da_ops.devices import resolve_device
    from align_da_ops.diffusion import checkpoint as prior_io
    from align_da_ops.errors import InputDataError

    guidance = guidance or ("dps" if from_archive else "obs_free")
    if guidance == "dps" and not from_archive:
        raise typer.BadParameter("DPS candidates need the cycles' observations: give --from-archive", param_hint="--guidance")
    try:
        psettings = prefs.PreferenceSettings(variant=variant, samples=samples, steps=sample_steps, lead_hours=lead_hours,
                                             every_hours=every_hours, forecast_hours=forecast_hours, seed=seed,
                                             guidance=guidance, strength=dps_strength,
                                             jacobian=dps_jacobian, geo_reference=geo_reference)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    device = resolve_device(cfg.device)
    layout, ae, prior_path, reference, model = _models(cfg, autoencoder, prior, forecast, device)
    states = open_states(cfg)
    pairs_path = pairs or default_pairs(cfg.name, variant)
    period = f"{cfg.splits.train.start:%Y-%m-%d}..{cfg.splits.train.end:%Y-%m-%d}"
    source = (f"archives {', '.join(map(str, from_archive))} (train split {period})" if from_archive
              else f"nature run {period}")
    existing = None
    if pairs_path.exists():
        existing = prefs.read_pairs(pairs_path)
        if existing.get("prior") != reference.content_hash or existing["settings"] != prefs.dataclasses.asdict(psettings) \
                or existing.get("source", source) != source:
            out.print(f"{pairs_path} was built from another prior, source or settings: rebuilding")
            existing = None
    if existing is None:
        d_reference = climatological_imbalance(cfg) if geo_reference == "climatology" else None
        if from_archive:
            cases = list(prefs.archive_cases(cfg, from_archive, psettings))
            if not cases:
                raise InputDataError(f"none of the archives holds a done cycle of the train split {period} with the truth "
                                     f"{psettings.forecast_hours} h later inside it: {', '.join(map(str, from_archive))}")
        else:
            train = cfg.splits.train
            cases = list(prefs.cases_from_states(training_trajectory(cfg), layout, model, train.start, train.end, psettings))
        from align_da_ops.cluster import client_for

        provenance = {"prior": reference.content_hash, "autoencoder": ae.content_hash,
                      "forecast_model": model.content_hash, "source": source}
        journal = prefs.journal_for(pairs_path, provenance, psettings, d_reference, cases)
        with client_for(len(cases), workers, threads, scheduler) as client, \
                progress_bar("preference cases", total=len(cases)) as bar:
            built = prefs.build(cases, ae, reference, model, layout, states[grid.LAT].values, states[grid.LON].values,
                                psettings, on_case=lambda i, n: bar(i, description=f"cases ({n} pairs)"), client=client,
                                d_reference=d_reference, journal=journal)
        digest = prefs.write_pairs(pairs_path, built, psettings, provenance)
        journal.discard()
        out.print(f"wrote {pairs_path}: {built['counts']} (hash {digest})")
    data = prefs.read_pairs(pairs_path)
    settings = AlignSettings(loss=loss, beta=beta, lr=lr, steps=steps, batch_size=batch_size,
                             seed=seed if align_seed is None else align_seed)
    target = output or default_aligned(cfg.name, variant)
    with progress_bar("alignment", total=steps) as bar:
        history = align(prior_path, data, target, settings, device,
                        on_step=lambda i, n, l, a: bar(i, description=f"{loss} loss {l:.4f} acc {a:.2f}"))
    s = summary(history)
    ckpt = prior_io.read(target)
    out.print(f"wrote {target} (hash {ckpt['content_hash']}; reference {ckpt['lineage']['reference']}, preference data "
              f"{ckpt['lineage']['preference_data']}, {len(data['z_winner'])} pairs); loss {s['loss_first']:.4f} -> "
              f"{s['loss_last']:.4f}, implicit accuracy {s['accuracy_first']:.2f} -> {s['accuracy_last']:.2f} (first/last 50 steps)")
    if export is not None:
        out.print(f"exported {export} (hash {checkpoint_io.strip_training(ckpt, export)})")


def bench_alignment(
    config: Path = typer.Argument(Path("config/tiny.yaml")),
    priors: str = typer.Option("", help="name=path,... (default: the packaged unaligned, aligned-p and aligned-m priors)."),
    guidance: str = typer.Option("obs_free,repaint,dps", help="Guidance modes (dps: through the denoiser; dps:gaussian: "
                                 "the scalar-Jacobian shortcut of the earlier results)."),
    seeds: int = typer.Option(3, help="Sampling seeds (mean and std over them)."),
    members: int = typer.Option(1, help="Ensemble members per analysis (the analysis is their mean)."),
    steps: int = typer.Option(32, help="Sampler steps."),
    every_hours: int = typer.Option(24, help="Hours between cases in the test split."),
    lead_hours: int = typer.Option(48, help="Background lead (paper: 48 h)."),
    threedvar: bool = typer.Option(True, help="Add the 3D-Var and background rows."),
    increment: str = typer.Option("observation", help="Analysis increment (observation, background or none; see analysis/latent_diffusion.py)."),
    estimate: str = typer.Option("mean", help="Analysis = mean of the sampled members (mean; varies with the seed) or the central trajectory (central)."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's choice)."),
):
    """Tables 1-2 of the paper on the held-out period: guidance x {unaligned, -P, -M}, mean ± std over seeds."""
    import torch

    from align_da_ops import grid
    from align_da_ops.align import benchmark
    from align_da_ops.analysis.base import BackgroundOnly
    from align_da_ops.analysis.latent_diffusion import LatentDiffusion, LatentDiffusionConfig
    from align_da_ops.analysis.threedvar import ThreeDVar, ThreeDVarConfig
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import normalization_path, open_states, read_normalization
    from align_da_ops.devices import resolve_device
    from align_da_ops.diffusion.checkpoint import load_prior, shipped_prior
    from align_da_ops.diffusion.guidance import parse_mode
    from align_da_ops.obs.operators import GridInterpolator

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    device = resolve_device(cfg.device)
    layout, ae, _, _, model = _models(cfg, None, None, None, device)
    named = dict(p.split("=", 1) for p in priors.split(",")) if priors else {
        "unaligned": shipped_prior(cfg.name), "aligned-p": shipped_prior(cfg.name, "aligned-p"),
        "aligned-m": shipped_prior(cfg.name, "aligned-m")}
    loaded = {name: load_prior(Path(path), ae.content_hash, device) for name, path in named.items()}
    states = open_states(cfg)
    lat, lon = states[grid.LAT].values, states[grid.LON].values
    norm = read_normalization(normalization_path(cfg))
    test = cfg.splits.test
    the_cases = benchmark.cases(states, layout, model, test.start, test.end, every_hours, lead_hours)
    interp = GridInterpolator(layout, lat, lon)
    rows = {}
    modes = guidance.split(",")
    total = len(the_cases) * (seeds * len(modes) * len(loaded) + (2 if threedvar else 0))
    with progress_bar("analyses", total=total) as bar:
        tick = bar.advance
        if threedvar:
            rows["background"] = benchmark.evaluate(BackgroundOnly, the_cases, [0], model, layout, norm, lat, lon, interp, on_case=tick)
            rows["3D-Var"] = benchmark.evaluate(lambda: ThreeDVar.from_config(ThreeDVarConfig(), layout.channels, lat, lon),
                                                the_cases, [0], model, layout, norm, lat, lon, interp, on_case=tick)
        for mode in modes:
            for name, prior in loaded.items():
                kind, jacobian = parse_mode(mode)
                ld = LatentDiffusionConfig(guidance=kind, jacobian=jacobian, steps=steps, members=members, estimate=estimate,
                                           increment=increment)
                factory = lambda ld=ld, prior=prior: LatentDiffusion(ld, ae, prior, ae.normalization.std)  # noqa: E731
                rows[f"{mode} {name}"] = benchmark.evaluate(factory, the_cases, range(seeds), model, layout, norm, lat, lon,
                                                            interp, members=members, on_case=tick)
    table = Table(title=f"held-out {test.start:%Y-%m-%d}..{test.end:%Y-%m-%d}: {len(the_cases)} cases (every {every_hours} h), "
                        f"{lead_hours}-h backgrounds, 1 % random mask noise-free; mean ± std over {seeds} seeds, "
                        f"{members} member(s) ({estimate}, {increment} increment), {steps} steps (z m²/s², t K, u/v m/s, geo x100)")
    for col in ("method", *benchmark.COLUMNS):
        table.add_column(col)
    for name, r in rows.items():
        table.add_row(name, *[f"{r[c][0]:.4g}±{r[c][1]:.2g}" if r[c][1] > 1e-9 * abs(r[c][0]) else f"{r[c][0]:.4g}"
                              for c in benchmark.COLUMNS])
    out.print(table)
