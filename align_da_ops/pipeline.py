"""The whole Align-DA chain from one command (`align-da pipeline CONFIG`).

nature run -> neural forecast model -> autoencoder -> prior -> preference data
-> alignment (-M) -> cycling with the aligned prior (DPS) over the held-out
period (validation + test splits) -> scores against the truth.
Every step writes under `workdir` (default data/<name>/chain) and resumes or
skips when its output is already complete, so the command can be rerun after
an interruption. `quick` shrinks every training to seconds (for tests and smoke
runs; the models are then mechanics-only, not skilful).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import yaml

from align_da_ops.config import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class ChainSettings:
    forecast_epochs: int = 22
    autoencoder_epochs: int = 60
    prior_epochs: int = 150
    align_loss: str = "ipo"  # the packaged tiny priors: IPO, 150 steps (DPO 500 steps overfit 189 pairs)
    align_steps: int = 150
    align_lr: float = 1e-5
    align_beta: float = 8000.0
    samples: int = 32
    every_hours: int = 12
    cycling_days: float | None = None  # None: the validation + test splits
    members: int = 4
    steps: int = 32

    @classmethod
    def quick(cls) -> "ChainSettings":
        return cls(forecast_epochs=1, autoencoder_epochs=1, prior_epochs=2, align_loss="dpo", align_steps=3, align_lr=1e-4, align_beta=50.0,
                   samples=8, every_hours=6, cycling_days=0.5, members=2, steps=3)


def run_chain(config_path: Path, cfg: ExperimentConfig, workdir: Path, settings: ChainSettings = ChainSettings(),
              quick: bool = False, say: Callable[[str], None] = print) -> dict:
    """Run (or resume) every step; returns the paths made and the cycling scores table."""
    from align_da_ops import evaluation, grid
    from align_da_ops.align import preferences as prefs
    from align_da_ops.align.climatology import climatological_imbalance
    from align_da_ops.align.dpo import AlignSettings, align
    from align_da_ops.campaign import CampaignConfig
    from align_da_ops.data import nature_run as nr
    from align_da_ops.data.sources import (layout_of, normalization_path, open_states, read_normalization,
                                          training_trajectory)
    from align_da_ops.devices import resolve_device
    from align_da_ops.diffusion.checkpoint import load_prior
    from align_da_ops.diffusion.training import PriorSettings, train_prior
    from align_da_ops.forecast.checkpoint import load_model
    from align_da_ops.forecast.training import TrainSettings, train
    from align_da_ops.latent.checkpoint import load_autoencoder
    from align_da_ops.latent.training import AutoencoderSettings, train_autoencoder
    from align_da_ops.replaying import replay
    from align_da_ops.wiring import build_context

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    paths = {k: workdir / v for k, v in {
        "forecast": "neural-forecast.pt", "autoencoder": "autoencoder.pt", "prior": "prior.pt",
        "pairs": "preferences-m.zarr", "aligned": "prior-aligned-m.pt", "archive": "archive"}.items()}
    say("1/7 nature run")
    nr.generate(cfg)
    layout = layout_of(cfg)
    nlat, nlon = cfg.state.grid.nlat, cfg.state.grid.nlon
    say("2/7 neural forecast model")
    fs = TrainSettings(epochs=settings.forecast_epochs, rollout_from_epoch=min(16, settings.forecast_epochs))
    if quick:
        fs = dataclasses.replace(fs, width=8, blocks=1, rollout_steps=1)
    train(cfg, paths["forecast"], fs, device)
    model = load_model(paths["forecast"], layout.channels, nlat, nlon, device)
    say("3/7 autoencoder")
    ae_settings = AutoencoderSettings(epochs=settings.autoencoder_epochs)
    if quick:
        ae_settings = dataclasses.replace(ae_settings, latent_channels=8, width=8)
    train_autoencoder(cfg, paths["autoencoder"], ae_settings, device)
    ae = load_autoencoder(paths["autoencoder"], layout.channels, nlat, nlon, device)
    say("4/7 prior")
    ps = PriorSettings(epochs=settings.prior_epochs)
    if quick:
        ps = dataclasses.replace(ps, width=8, blocks=1, leads=(6,), batch_size=2, warmup_steps=1)
    train_prior(cfg, paths["prior"], ae, model, ps, device)
    prior = load_prior(paths["prior"], ae.content_hash, device)
    say("5/7 preference data (-M)")
    states = training_trajectory(cfg)
    pset = prefs.PreferenceSettings(variant="m", samples=settings.samples, every_hours=settings.every_hours,
                                    lead_hours=6 if quick else 48, forecast_hours=6 if quick else 48,
                                    steps=settings.steps if quick else 16, quantile=0.1, min_side=1 if quick else 2,
                                    geo_reference="climatology")
    made = prefs.read_pairs(paths["pairs"]) if paths["pairs"].exists() else {}
    if made.get("prior") != prior.content_hash or made.get("settings") != dataclasses.asdict(pset):
        cases = list(prefs.cases_from_states(states, layout, model, cfg.splits.train.start, cfg.splits.train.end, pset))
        provenance = {"prior": prior.content_hash, "autoencoder": ae.content_hash,
                      "forecast_model": model.content_hash, "source": "nature run train split"}
        d_reference = climatological_imbalance(cfg)
        journal = prefs.journal_for(paths["pairs"], provenance, pset, d_reference, cases)
        built = prefs.build(cases, ae, prior, model, layout, states[grid.LAT].values, states[grid.LON].values, pset,
                            d_reference=d_reference, journal=journal)
        prefs.write_pairs(paths["pairs"], built, pset, provenance)
        journal.discard()
    say(f"6/7 alignment ({settings.align_loss.upper()})")
    aset = AlignSettings(loss=settings.align_loss, beta=settings.align_beta, lr=settings.align_lr, steps=settings.align_steps,
                         batch_size=4 if quick else 32, checkpoint_every=100)
    align(paths["prior"], prefs.read_pairs(paths["pairs"]), paths["aligned"], aset, device)
    say("7/7 cycling with the aligned prior (DPS, 1 % random mask)")
    start = cfg.splits.validation.start
    end = cfg.splits.test.end if settings.cycling_days is None else start + timedelta(days=settings.cycling_days) - timedelta(hours=6)
    campaign_file = workdir / "campaign.yaml"
    raw = {
        "name": f"{cfg.name}-chain-align-dps", "config": str(Path(config_path).resolve()),
        "start": start.isoformat(), "end": end.isoformat(),
        "observations": {"networks": [{"kind": "random_mask", "fraction": 0.01}]},
        "analysis": {"kind": "latent_diffusion", "guidance": "dps", "autoencoder": str(paths["autoencoder"].resolve()),
                     "prior": str(paths["aligned"].resolve()), "members": settings.members, "steps": settings.steps},
        "forecast_model": {"kind": "neural", "checkpoint": str(paths["forecast"].resolve())},
        "cold_start": {"kind": "truth_offset", "offset_days": 0.25 if quick else 10},
        "leads_hours": [6, 24] if quick else [6, 24, 48],
        "archive": str(paths["archive"].resolve()),
    }
    campaign_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    ctx = build_context(CampaignConfig.model_validate(raw), cfg)
    replay(ctx, ctx.campaign.first, ctx.campaign.last)
    norm = read_normalization(normalization_path(cfg))
    # the cycles ran on data.member's trajectory (held out when the train split lists other members)
    scores = evaluation.archive_scores(ctx.archive, open_states(cfg), ctx.campaign.name, norm=norm)
    return {"paths": paths, "campaign": campaign_file, "scores": scores}
